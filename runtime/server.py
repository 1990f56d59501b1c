"""Runs the broker: Redis connection (embedded or given), scheduler loops and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn
import uvloop

from runtime import metrics, sdnotify, trace_export
from runtime.api import system
from runtime.api.app import App, Hook
from runtime.api.http_protocol import HttpLimits, protocol_factory
from runtime.api.routes import build_router
from runtime.api.routing import Router
from runtime.api.services import Services
from runtime.broker.clients import endpoint_client
from runtime.broker.core import Broker
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis, default_data_dir, redacted
from runtime.liveness import EXIT_BOOT_ERROR, EXIT_OK, Board
from runtime.scheduler import Scheduler
from runtime.webhooks.delivery import DeliveryLoop

logger = logging.getLogger(__name__)

LOCK_WAIT_S = 15.0  # a previous server on the same data dir may still be finishing its stop


class InsecureBinding(RuntimeError):
    """Refusing to expose an unauthenticated endpoint beyond this machine."""


class CannotListen(OSError):
    """The listen address is taken (or not ours to take): said once, with the address."""


LISTEN_BACKLOG = 2048


def check_binding(settings: Settings, host: str | None = None, *, what: str = "the OJS endpoint") -> None:
    """Refuse an endpoint beyond loopback unless an API key is set or the risk is accepted. The
    probes and /metrics are open paths everywhere: they need the same guard, not the key."""
    host = settings.host if host is None else host
    if settings.api_key or settings.allow_insecure_no_auth or _is_loopback(host):
        return
    raise InsecureBinding(
        f"Refusing to serve {what} on {host} without an API key: set OJS_API_KEY, "
        "or OJS_ALLOW_INSECURE_NO_AUTH=true to accept the risk."
    )


def open_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a taken port is an error at
    once (uvicorn, binding late, logs it and hangs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        if err.errno == errno.EADDRINUSE:
            reason = "address already in use (is another server running?)"
        raise CannotListen(err.errno or 0, f"cannot listen on {host}:{port}: {reason}") from None


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
    loops: bool = True,
) -> tuple[App, Services]:
    """The OJS endpoint with its scheduler loops (without them when not `loops`: the other
    processes of ``ojs-server --workers``); with `probes_only`, just /health, /ready and /metrics
    and no loops (``ojs-run --metrics-port``)."""
    metrics.set_label_cap(settings.metrics_label_cap)
    services = Services(broker, settings, board=board)
    probe = services.probe
    if probes_only:
        router = Router()
        system.register(router, services, probes_only=True)
        return _app(router, settings, startup=[probe.start], shutdown=[probe.stop]), services
    if not loops:
        return _app(build_router(services), settings, startup=[probe.start], shutdown=[probe.stop]), services
    scheduler = Scheduler(broker, services.crons, settings, services.history)
    deliveries = DeliveryLoop(services.webhooks, settings)  # the webhook outbox, drained beside the scheduler
    app = _app(build_router(services), settings, startup=[probe.start, scheduler.start, deliveries.start],
               shutdown=[deliveries.stop, scheduler.stop, probe.stop])
    return app, services


def _app(router: Router, settings: Settings, *, startup: list[Hook], shutdown: list[Hook]) -> App:
    return App(router, api_key=settings.api_key, read_keys=settings.api_read_keys, max_body_bytes=settings.max_body_bytes,
               body_timeout_s=settings.http_body_timeout_ms / 1000, startup=startup, shutdown=shutdown)


def uvicorn_config(app: App, settings: Settings, *, graceful_s: float) -> uvicorn.Config:
    """uvicorn on httptools with the limits of :mod:`runtime.api.http_protocol` (which answers the
    concurrency bound itself, with the OJS error body, and lets the probes through)."""
    limits = HttpLimits(header_timeout_s=settings.http_header_timeout_ms / 1000,
                        max_concurrency=settings.http_max_concurrency)
    return uvicorn.Config(
        app, loop="none", http=protocol_factory(limits), lifespan="on", log_level="warning",
        access_log=False, server_header=False,
        timeout_graceful_shutdown=graceful_s,  # type: ignore[arg-type]  # typed int; a float works (a wait's timeout)
        backlog=LISTEN_BACKLOG,
    )


def serve_socket(settings: Settings, listener: socket.socket, *, board: Board | None = None,
                 probes_only: bool = False) -> int:
    """Serve the endpoint (or just the probes and /metrics) on an inherited listening socket until
    stopped: the HTTP processes of ``ojs-run``. Exit code 3 when it never got to serve."""
    async def serve() -> bool:
        redis = endpoint_client(settings, settings.redis_url or "")
        broker = Broker(redis, settings)
        try:
            app, _services = build_app(broker, settings, board=board, probes_only=probes_only)
            server = uvicorn.Server(uvicorn_config(app, settings, graceful_s=5))
            await server.serve(sockets=[listener])
            return server.started
        finally:
            await broker.close()
            await redis.aclose(close_connection_pool=True)

    started = asyncio.Runner(loop_factory=uvloop.new_event_loop).run(serve())
    return EXIT_OK if started else EXIT_BOOT_ERROR


async def serve(settings: Settings, redis_url: str, listener: socket.socket) -> None:
    redis = endpoint_client(settings, redis_url)
    broker = Broker(redis, settings)
    try:
        app, _services = build_app(broker, settings)
        server = uvicorn.Server(uvicorn_config(app, settings, graceful_s=30))
        notifier = sdnotify.Notifier()

        async def stopping() -> None:  # first of the shutdown hooks, for a stop too quick to poll
            notifier.stopping("stopping")

        app.shutdown.insert(0, stopping)
        pings = asyncio.get_running_loop().create_task(_tell_systemd(server, notifier, f"{settings.host}:{settings.port}"))
        try:
            await server.serve(sockets=[listener])
        finally:
            pings.cancel()
    finally:
        await broker.close()
        await redis.aclose(close_connection_pool=True)


async def _tell_systemd(server: uvicorn.Server, notifier: sdnotify.Notifier, address: str) -> None:
    """sd_notify for ``ojs-server`` under ``Type=notify``: READY=1 once uvicorn listens, WATCHDOG=1
    from the event loop (so a blocked loop stops the pings), STOPPING=1 when a stop begins."""
    if not notifier.enabled:
        return
    while not server.should_exit:
        if server.started:
            notifier.ready(f"serving on {address}")
        notifier.watchdog()
        await asyncio.sleep(min(notifier.interval_s or 0.2, 0.2))
    notifier.stopping("finishing in-flight requests")


def run(settings: Settings) -> None:
    check_binding(settings)
    listener = open_listener(settings.host, settings.port)  # before the embedded Redis starts
    logger.info("OJS endpoint on http://%s:%s", settings.host, settings.port)
    try:
        if metrics.multiprocess_enabled():  # set in the environment: start from an empty directory
            metrics.enable_multiprocess()
        with redis_url_for(settings) as url, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            trace_export.start("server")  # after the embedded Redis is launched: its exporter holds a thread
            try:
                runner.run(serve(settings, url, listener))
            finally:
                trace_export.stop()
    finally:
        listener.close()
