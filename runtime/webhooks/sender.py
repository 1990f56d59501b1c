"""One delivery attempt: a blocking HTTP POST, run in a thread of its own, never on the event loop.

The whole attempt (connect, send, redirects, reading the response) is bounded by one deadline,
and only the first bytes of the response are read. Redirects are followed (spec 7.1, up to 3)
only within the subscription URL's own origin: a receiver may move a path, but a delivery with its
signature is never carried to a host the subscriber did not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import math
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

import msgspec

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_RESPONSE_BYTES = 4096  # read of a response body; the rest is never read
EXCERPT_CHARS = 512  # kept in the delivery log
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TLS = ssl.create_default_context()


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt got: a status, or an error without one."""

    status: int | None = None
    error: str | None = None
    permanent: bool = False  # retrying cannot help (a refused redirect)
    duration_ms: int = 0
    response_body: str = ""
    retry_after_s: float | None = None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff schedule decides instead
    if seconds is None or not math.isfinite(seconds):
        return None  # "inf", "nan": no delay to take from it
    return max(0.0, seconds)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _read_bounded(response: http.client.HTTPResponse, conn: http.client.HTTPConnection, deadline: float) -> bytes:
    data = b""
    while len(data) < MAX_RESPONSE_BYTES:
        if conn.sock is not None:
            conn.sock.settimeout(_remaining(deadline))
        chunk = response.read1(MAX_RESPONSE_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _abort(conn: http.client.HTTPConnection, fired: threading.Event) -> None:
    """At the deadline: end the attempt whatever it is waiting for (a receiver trickling its
    headers a byte at a time would keep every read within its own timeout). What was read by
    then is cut short, so the attempt counts as timed out whatever it parsed."""
    fired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout_s, context=_TLS), target
    return http.client.HTTPConnection(host, parts.port, timeout=timeout_s), target


def post(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> Attempt:
    """POST `body` to `url`; never raises for what the network or the receiver does."""
    started = time.monotonic()
    deadline = started + timeout_s
    origin = _origin(url)

    def done(**fields: object) -> Attempt:
        return Attempt(duration_ms=int((time.monotonic() - started) * 1000), **fields)  # type: ignore[arg-type]

    for _hop in range(MAX_REDIRECTS + 1):
        try:
            conn, target = _connection(url, _remaining(deadline))
            fired = threading.Event()
            watchdog = threading.Timer(_remaining(deadline), _abort, args=(conn, fired))
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.request("POST", target, body=body, headers=headers)
                if conn.sock is not None:
                    conn.sock.settimeout(_remaining(deadline))
                response = conn.getresponse()
                excerpt = _read_bounded(response, conn, deadline).decode("utf-8", "replace")[:EXCERPT_CHARS]
                location = response.getheader("location")
                retry_after = _retry_after(response.getheader("retry-after"))
            finally:
                watchdog.cancel()
                conn.close()
            if fired.is_set():
                raise TimeoutError("timed out")
        except (OSError, http.client.HTTPException, ValueError) as err:
            if isinstance(err, TimeoutError) or time.monotonic() >= deadline:  # the watchdog's doing
                return done(error="timeout: no complete response in time")
            return done(error=f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        status = response.status
        if status not in REDIRECTS or not location:
            return done(status=status, response_body=excerpt, retry_after_s=retry_after)
        try:
            next_url = urljoin(url, location)
            next_origin = _origin(next_url)  # reads the port: a bad one raises
        except ValueError as err:
            return done(status=status, permanent=True, response_body=excerpt,
                        error=f"redirect to an invalid location refused: {err}")
        if next_origin != origin:
            return done(status=status, permanent=True, response_body=excerpt,
                        error=f"redirect to another origin refused: {next_url[:200]}")
        url = next_url
    return done(status=status, permanent=True, error=f"more than {MAX_REDIRECTS} redirects")


# Past the attempt's deadline, how long its waiter gives the thread to report before ending the
# attempt itself: what the thread's own watchdog cannot cut short (the name lookup, a connect to
# each of several addresses) must not hold a delivery slot past the deadline.
SEND_MARGIN_S = 0.5


async def send(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> Attempt:
    """`post` in a daemon thread of its own, waited for at most the attempt's deadline (and a
    margin): a thread still resolving or connecting then is left to end by itself, its result
    unread. Not a thread pool: its threads are joined at exit, so a stopping server would wait
    out attempts it has given up on (they are redelivered)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Attempt] = loop.create_future()

    def settle(result: Attempt) -> None:
        if not future.done():
            future.set_result(result)

    def attempt() -> None:
        try:
            result = post(url, body, headers, timeout_s=timeout_s)
        except Exception as err:  # whatever it was, the attempt ends: a waiter never waits for ever
            logger.exception("webhook attempt to %s failed unexpectedly", url[:200])
            result = Attempt(error=f"{type(err).__name__}: {err}"[:500])
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result)

    started = time.monotonic()
    threading.Thread(target=attempt, name="webhook-attempt", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s + SEND_MARGIN_S)
    except TimeoutError:
        return Attempt(error="timeout: no complete response in time (the connection was not made)",
                       duration_ms=int((time.monotonic() - started) * 1000))
