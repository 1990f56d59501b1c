"""Runs the broker: Redis connection (embedded or given), scheduler loops and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator

import uvicorn
import uvloop
from redis.asyncio import Redis

from runtime.api.app import App
from runtime.api.routes import build_router
from runtime.api.services import Services
from runtime.broker.core import Broker
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis
from runtime.scheduler import Scheduler

logger = logging.getLogger(__name__)


class InsecureBinding(RuntimeError):
    """Refusing to expose an unauthenticated endpoint beyond this machine."""


def check_binding(settings: Settings) -> None:
    if settings.api_key or settings.allow_insecure_no_auth or _is_loopback(settings.host):
        return
    raise InsecureBinding(
        f"Refusing to listen on {settings.host} without an API key: set OJS_API_KEY, "
        "or OJS_ALLOW_INSECURE_NO_AUTH=true to accept the risk."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def redis_connection(settings: Settings) -> AsyncIterator[tuple[Redis, str]]:
    """The configured Redis, or a private embedded one (stopped on exit)."""
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(data_dir=settings.data_dir, persistence=True)
        url = await asyncio.to_thread(embedded.start)
        logger.info("using embedded Redis at %s", url)
    redis = Redis.from_url(url, decode_responses=False, health_check_interval=30)
    try:
        yield redis, url
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def build_app(broker: Broker, settings: Settings) -> tuple[App, Services]:
    services = Services(broker, settings)
    scheduler = Scheduler(broker, services.crons, settings)
    app = App(
        build_router(services), api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
        startup=[scheduler.start], shutdown=[scheduler.stop],
    )
    return app, services


async def serve(settings: Settings) -> None:
    check_binding(settings)
    async with redis_connection(settings) as (redis, _url):
        app, _services = build_app(Broker(redis, settings), settings)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, loop="none", http="httptools",
            lifespan="on", log_level="warning", access_log=False, server_header=False,
            timeout_graceful_shutdown=30,
        )
        logger.info("OJS endpoint on http://%s:%s", settings.host, settings.port)
        await uvicorn.Server(config).serve()


def run(settings: Settings) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))
