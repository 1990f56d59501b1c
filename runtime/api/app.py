"""The ASGI application: request framing, auth, limits, request ids and error bodies.

Handlers live in the sibling modules and only translate between HTTP and the broker.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from runtime import logs, tracing
from runtime.api.routing import Request, Response, Router, json_response
from runtime.broker import BACKEND_ERRORS, outcome
from runtime.errors import (
    BackendOutcomeUnknown,
    BackendUnavailable,
    Forbidden,
    InvalidPayload,
    MethodNotAllowed,
    NotFound,
    OJSError,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unsupported,
)
from runtime.ids import uuid7

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

DOCS_URL = "https://openjobspec.org/spec/ojs-http-binding#errors"
OPEN_PATHS = frozenset({"/health", "/ready", "/ojs/v1/health", "/metrics"})
# The dashboard's static files: a browser loads them before it can send a key, and they hold no data.
DASHBOARD_PATH = "/ojs/admin"
MAX_REQUEST_ID = 128
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # no effect to duplicate: always worth a retry


def error_body(err: OJSError, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": err.code,
        "message": err.message,
        "retryable": err.retryable,
        "type": err.error_type or err.code,
        "request_id": request_id,
        "docs_url": DOCS_URL,
        "doc_url": DOCS_URL,
    }
    if err.hint:
        body["hint"] = err.hint
    if err.details:
        body["details"] = err.details
    return {"error": body}


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


class App:
    """ASGI entry point. `startup`/`shutdown` hooks run on the lifespan protocol."""

    def __init__(
        self, router: Router, *, api_key: str | None, max_body_bytes: int, body_timeout_s: float = 10.0,
        read_keys: tuple[str, ...] = (), startup: list[Hook] | None = None, shutdown: list[Hook] | None = None,
    ) -> None:
        self.router = router
        self.api_key = api_key.encode() if api_key else None
        # Read-only keys see everything and change nothing (the admin API's read scopes); they
        # only mean something beside a full key.
        self.read_keys = tuple(k.encode() for k in read_keys if k) if api_key else ()
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s  # for the whole body, from the end of the headers
        self.startup = startup or []
        self.shutdown = shutdown or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.startup:
                        await hook()
                except Exception as err:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.shutdown:
                    try:
                        await hook()
                    except Exception:
                        logger.exception("shutdown hook failed")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name.lower(): value for name, value in scope["headers"]}
        given_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given_id if 0 < len(given_id) <= MAX_REQUEST_ID else f"req_{uuid7()}"
        token = logs.REQUEST_ID.set(request_id)  # on every log line of this request
        try:
            if tracing.enabled():  # a SERVER span, parent of the enqueue's PRODUCER span
                with tracing.server_span(scope["method"], headers) as span:
                    response = await self._answer(scope, receive, headers, request_id, span)
                    tracing.response_status(span, response.status)
            else:
                response = await self._answer(scope, receive, headers, request_id, None)
        finally:
            logs.REQUEST_ID.reset(token)
        response.headers.append((b"ojs-version", b"1.0"))
        response.headers.append((b"x-request-id", request_id.encode("latin-1")))
        response.headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _answer(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], request_id: str,
                      span: Any) -> Response:
        """The response to one request, errors included (as the OJS error body)."""
        try:
            return await self._dispatch(scope, receive, headers, request_id, span)
        except OJSError as err:
            response = json_response(err.status, error_body(err, request_id), list(err.headers))
            if isinstance(err, RequestTimeout):  # the rest of the body may still come: not a next request
                response.headers.append((b"connection", b"close"))
            return response
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            return json_response(500, error_body(OJSError("Internal server error."), request_id))

    async def _dispatch(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], request_id: str,
                        span: Any) -> Response:
        path: str = scope["path"]
        method: str = scope["method"]
        read_only = False
        if self.api_key is not None and path not in OPEN_PATHS and not _is_dashboard(path):
            read_only = self._authorize(headers)
            if read_only and method not in SAFE_METHODS:
                raise Forbidden(f"This API key is read-only: {method} {path} is not allowed.")
        version = headers.get(b"ojs-version")
        if version is not None and version.strip() not in (b"1.0", b"1"):
            raise Unsupported(f"OJS-Version '{version.decode('latin-1')}' is not supported; use 1.0.")
        handler, params, path_known, template = self.router.resolve(method, path.rstrip("/") or "/")
        if span is not None and template is not None:
            tracing.name_route(span, method, template)
        if handler is None:
            if path_known:
                raise MethodNotAllowed(f"Method {method} is not allowed on {path}.")
            raise NotFound(f"No endpoint at {path}.")
        body = await self._read_body(receive, headers)
        try:
            body.decode("utf-8")  # once per body: every JSON string below is then valid UTF-8
        except UnicodeDecodeError:
            raise InvalidPayload("Request body is not valid UTF-8.") from None
        request = Request(
            method=method, path=path, query_string=scope.get("query_string", b""), headers=headers,
            body=body, request_id=request_id,
        )
        request.params = params
        request.read_only = read_only
        token = outcome.track()
        try:
            return await handler(request)
        except RecursionError:
            raise InvalidPayload("Request body is nested too deeply.") from None
        except BACKEND_ERRORS as err:
            # The client is not told the error itself: it names the job store's address.
            logger.debug("%s %s: job store error: %s", method, path, err or type(err).__name__)
            if method in SAFE_METHODS or outcome.surely_not_run(err):
                raise BackendUnavailable("Job store unavailable.") from None
            raise BackendOutcomeUnknown(
                "Job store connection failed while the request was in flight; its outcome is unknown.",
            ) from None
        finally:
            outcome.untrack(token)

    def _authorize(self, headers: dict[bytes, bytes]) -> bool:
        """Whether the caller holds a read-only key; 401 without a valid key. Every key is
        compared (in constant time), so the time taken does not tell which kind matched."""
        assert self.api_key is not None
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        token = token.strip()
        full = hmac.compare_digest(token, self.api_key)
        read = False
        for key in self.read_keys:
            read = hmac.compare_digest(token, key) or read
        if scheme.lower() != b"bearer" or not (full or read):
            raise Unauthorized("Missing or invalid API key.")
        return not full

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"Request body exceeds {self.max_body_bytes} bytes.")
        expected = int(declared) if declared is not None and declared.isdigit() else 0
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"Request body not received within {self.body_timeout_s:g} s.") from None
            if message["type"] == "http.disconnect":
                if not chunks and not expected and not chunked:
                    break  # a request without a body, whose client left at once
                # Gone before its body ended (part of it came, or none of what was announced):
                # what arrived is not the request it meant (a prefix can even be valid JSON).
                raise InvalidPayload("The client disconnected before the request body ended.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"Request body exceeds {self.max_body_bytes} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

