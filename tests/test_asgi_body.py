"""The ASGI app's body reading: a request whose client left before its body ended is not acted on,
even when what arrived is valid JSON; a whole body split across messages is, and so is a request
without a body whose client left at once (the server reports only the disconnect)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from runtime.api.app import App
from runtime.api.routing import Request, Response, Router, json_response

BODY = b'{"type":"half.body","args":[]}'


def call(messages: list[dict[str, Any]], *, length: int | None = 100,
         chunked: bool = False) -> tuple[list[bytes], dict[str, Any]]:
    """POST /jobs through the app with these receive messages: (bodies the handler saw, reply)."""
    seen: list[bytes] = []

    async def enqueue(request: Request) -> Response:
        seen.append(request.body)
        return json_response(201, {"ok": True})

    router = Router()
    router.add("POST", "/jobs", enqueue)
    app = App(router, api_key=None, max_body_bytes=1 << 20)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"", "headers": headers}
    asyncio.run(app(scope, receive, send))
    start, body = sent
    return seen, {"status": start["status"], "body": msgspec.json.decode(body["body"])}


def test_a_body_cut_by_a_disconnect_is_not_acted_on_even_when_it_is_valid_json() -> None:
    seen, reply = call([
        {"type": "http.request", "body": BODY, "more_body": True},
        {"type": "http.disconnect"},
    ])
    assert seen == []
    assert reply["status"] == 400
    assert "disconnected" in reply["body"]["error"]["message"]


def test_a_body_in_several_messages_is_read_whole() -> None:
    seen, reply = call([
        {"type": "http.request", "body": BODY[:10], "more_body": True},
        {"type": "http.request", "body": BODY[10:], "more_body": False},
    ])
    assert seen == [BODY]
    assert reply["status"] == 201


def test_a_request_without_a_body_whose_client_left_at_once_is_acted_on() -> None:
    seen, reply = call([{"type": "http.disconnect"}], length=None)
    assert seen == [b""]
    assert reply["status"] == 201


def test_a_chunked_body_cut_by_a_disconnect_is_not_acted_on() -> None:
    seen, reply = call([
        {"type": "http.request", "body": BODY, "more_body": True},
        {"type": "http.disconnect"},
    ], length=None)
    assert seen == []
    assert reply["status"] == 400


def test_an_announced_body_that_never_came_is_not_acted_on() -> None:
    for length, chunked in ((100, False), (None, True)):
        seen, reply = call([{"type": "http.disconnect"}], length=length, chunked=chunked)
        assert (seen, reply["status"]) == ([], 400)
