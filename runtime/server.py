"""Runs the broker: Redis connection (embedded or given), scheduler loops and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterator

import uvicorn
import uvloop

from runtime import metrics, sdnotify
from runtime.api import system
from runtime.api.app import App
from runtime.api.routes import build_router
from runtime.api.routing import Router
from runtime.api.services import Services
from runtime.broker.clients import redis_client
from runtime.broker.core import Broker
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis, default_data_dir, redacted
from runtime.liveness import Board
from runtime.scheduler import Scheduler

logger = logging.getLogger(__name__)

LOCK_WAIT_S = 15.0  # a previous server on the same data dir may still be finishing its stop


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


@contextlib.contextmanager
def redis_url_for(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or the embedded Redis for the duration (stopped on exit): on its
    Unix socket only, with its data in ``settings.data_dir`` (default: a persistent directory,
    see :func:`runtime.embedded_redis.default_data_dir`). Its keeper stops it if this process dies."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(
        data_dir=settings.data_dir or default_data_dir(), persistence=True, tcp=False,
        appendfsync=settings.embedded_appendfsync, lock_wait_s=LOCK_WAIT_S,
    )
    embedded.start()
    url = embedded.local_url
    logger.info("using embedded Redis at %s", redacted(url))
    try:
        yield url
    finally:
        embedded.stop()


def build_app(
    broker: Broker, settings: Settings, *, board: Board | None = None, probes_only: bool = False,
) -> tuple[App, Services]:
    """The OJS endpoint with its scheduler loops; with `probes_only`, just /health, /ready and
    /metrics and no loops (``ojs-run --metrics-port``)."""
    metrics.set_label_cap(settings.metrics_label_cap)
    services = Services(broker, settings, board=board)
    if probes_only:
        router = Router()
        system.register(router, services, probes_only=True)
        return App(router, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes), services
    scheduler = Scheduler(broker, services.crons, settings)
    app = App(
        build_router(services), api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
        startup=[scheduler.start], shutdown=[scheduler.stop],
    )
    return app, services


async def serve(settings: Settings, redis_url: str) -> None:
    redis = redis_client(settings, redis_url, decode_responses=False)
    broker = Broker(redis, settings)
    try:
        app, _services = build_app(broker, settings)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, loop="none", http="httptools",
            lifespan="on", log_level="warning", access_log=False, server_header=False,
            timeout_graceful_shutdown=30,
        )
        logger.info("OJS endpoint on http://%s:%s", settings.host, settings.port)
        server = uvicorn.Server(config)
        notifier = sdnotify.Notifier()

        async def stopping() -> None:  # first of the shutdown hooks, for a stop too quick to poll
            notifier.stopping("stopping")

        app.shutdown.insert(0, stopping)
        pings = asyncio.get_running_loop().create_task(_tell_systemd(server, notifier))
        try:
            await server.serve()
        finally:
            pings.cancel()
    finally:
        await broker.close()
        await redis.aclose()


async def _tell_systemd(server: uvicorn.Server, notifier: sdnotify.Notifier) -> None:
    """sd_notify for ``ojs-server`` under ``Type=notify``: READY=1 once uvicorn listens, WATCHDOG=1
    from the event loop (so a blocked loop stops the pings), STOPPING=1 when a stop begins."""
    if not notifier.enabled:
        return
    while not server.should_exit:
        if server.started:
            notifier.ready(f"serving on {server.config.host}:{server.config.port}")
        notifier.watchdog()
        await asyncio.sleep(min(notifier.interval_s or 0.2, 0.2))
    notifier.stopping("finishing in-flight requests")


def run(settings: Settings) -> None:
    check_binding(settings)
    if metrics.multiprocess_enabled():  # set in the environment: start from an empty directory
        metrics.enable_multiprocess()
    with redis_url_for(settings) as url, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, url))
