"""A small router: method + path template -> async handler. No framework, no magic."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec

from runtime.errors import InvalidPayload, InvalidRequest

JSON_CONTENT_TYPE = b"application/openjobspec+json"

_encode = msgspec.json.encode


class Request:
    """What a handler sees of one HTTP request."""

    __slots__ = ("method", "path", "params", "headers", "body", "request_id", "read_only", "_query")

    def __init__(
        self, *, method: str, path: str, query_string: bytes, headers: dict[bytes, bytes],
        body: bytes, request_id: str,
    ) -> None:
        self.method = method
        self.path = path
        self.params: dict[str, str] = {}
        self.headers = headers
        self.body = body
        self.request_id = request_id
        self.read_only = False  # the caller holds a read-only API key
        self._query = query_string

    def query(self, name: str) -> str | None:
        values = parse_qs(self._query.decode("latin-1"), keep_blank_values=True).get(name)
        return values[-1] if values else None

    def query_int(self, name: str, *, default: int, minimum: int, maximum: int) -> int:
        raw = self.query(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequest(f"Query parameter '{name}' must be an integer.") from None
        if not minimum <= value <= maximum:
            raise InvalidRequest(f"Query parameter '{name}' must be between {minimum} and {maximum}.")
        return value

    def query_list(self, name: str) -> list[str]:
        raw = self.query(name)
        return [part.strip() for part in raw.split(",") if part.strip()] if raw else []

    def decode(self, decoder: msgspec.json.Decoder[Any], *, allow_empty: bool = False) -> Any:
        """Decode the body with a typed decoder: bad JSON is 400 invalid_payload, bad fields 400
        invalid_request. An empty body means `{}` where the endpoint has no required fields."""
        body = self.body
        if not body.strip():
            if not allow_empty:
                raise InvalidPayload("Request body is required and must be a JSON object.")
            body = b"{}"
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as err:
            raise InvalidRequest(f"Invalid request: {err}") from None
        except msgspec.DecodeError as err:
            raise InvalidPayload(f"Malformed JSON: {err}") from None


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


def json_response(status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = payload if isinstance(payload, bytes) else _encode(payload)
    return Response(status, body, [(b"content-type", JSON_CONTENT_TYPE), *(headers or [])])


Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{(\w+)\}")


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = "^" + _PARAM.sub(r"(?P<\1>[^/]+)", template) + "$"
        self._routes.append((method, re.compile(pattern), handler, template))

    def match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """(handler, params, path_known). path_known without a handler means 405."""
        handler, params, path_known, _template = self.resolve(method, path)
        return handler, params, path_known

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool, str | None]:
        """`match`, and the route template that matched (a low-cardinality name for the request)."""
        path_known = False
        for route_method, pattern, handler, template in self._routes:
            found = pattern.match(path)
            if found is None:
                continue
            path_known = True
            if route_method == method:
                return handler, found.groupdict(), True, template
        return None, {}, path_known, None
