"""uvicorn's httptools protocol with the limits a public endpoint needs.

uvicorn bounds only the idle time between two requests on a kept-alive connection. This protocol
adds, per connection:

* a deadline for the request head: from the connection (or the first byte of the next request
  on a kept-alive one) to the end of its headers. A client that sends half a header and waits
  gets a 408 and its connection is closed, instead of holding it (and a file descriptor) forever.
  The rest of a body the application answered without reading gets the same deadline;
* a bound on open connections and requests in progress, answered with the OJS error body (503,
  retryable, ``Retry-After``) on a closed connection. The probes are exempt: they read a cached
  result and touch nothing shared, so load never fails a liveness probe.

The body deadline belongs to the application, which is what waits in ``receive()``
(:meth:`runtime.api.app.App._read_body`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runtime.api.app import error_body
from runtime.api.routing import JSON_CONTENT_TYPE
from runtime.errors import OJSError, RequestTimeout, ServerBusy
from runtime.ids import uuid7

logger = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/health", "/ready", "/ojs/v1/health"})
BUSY_LOG_EVERY_S = 10.0  # one warning per interval, with the count, not one per refused request


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    header_timeout_s: float
    max_concurrency: int  # 0: no bound


def protocol_factory(limits: HttpLimits) -> Any:
    """What uvicorn's ``Config(http=...)`` takes: it calls it with its own keyword arguments."""
    return functools.partial(GuardedHttpProtocol, limits=limits)


class _BusyLog:
    def __init__(self) -> None:
        self.refused = 0
        self.logged_at = 0.0

    def note(self, connections: int, tasks: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= BUSY_LOG_EVERY_S:
            logger.warning("at the concurrency limit (%d connections, %d requests in progress): "
                           "refused %d request(s) with 503", connections, tasks, self.refused)
            self.logged_at, self.refused = now, 0


_busy_log = _BusyLog()


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        if not self._over_limit():
            super().on_headers_complete()
            return
        app, self.app = self.app, _busy_app  # the parent starts the request with self.app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # Answered before its body was read (404, 413...): the rest of the body and the next
            # head get the head deadline, or a client could trickle an endless body into it.
            self._arm_head_timer()

    def _over_limit(self) -> bool:
        limit = self.limits.max_concurrency
        # This connection is among the open ones; its request is not yet among those in progress.
        if not limit or (len(self.connections) <= limit and len(self.tasks) < limit):
            return False
        if httptools.parse_url(self.url).path.decode("ascii", "replace") in PROBE_PATHS:
            return False
        _busy_log.note(len(self.connections), len(self.tasks))
        return True

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined head is late: close once this response is out
            return
        err = RequestTimeout(f"Request head not received within {self.limits.header_timeout_s:g} s.")
        self.transport.write(_raw_response(err))
        self.transport.close()


def _body(err: OJSError) -> bytes:
    return msgspec.json.encode(error_body(err, f"req_{uuid7()}"))


def _headers(body: bytes, *, retry_after: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", JSON_CONTENT_TYPE), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"ojs-version", b"1.0"),
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    return headers


def _raw_response(err: OJSError) -> bytes:
    """A whole response for a connection with no request in progress (no ASGI cycle to send it)."""
    body = _body(err)
    lines = [STATUS_LINE[err.status]]
    lines += [name + b": " + value + b"\r\n" for name, value in _headers(body, retry_after=False)]
    return b"".join([*lines, b"\r\n", body])


async def _busy_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = _body(ServerBusy("Server at its concurrency limit; retry shortly."))
    await send({"type": "http.response.start", "status": 503, "headers": _headers(body, retry_after=True)})
    await send({"type": "http.response.body", "body": body})
