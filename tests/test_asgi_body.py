"""The ASGI app's body reading: a request whose client left before its body ended is not acted on,
even when what arrived is valid JSON; a whole body split across messages is."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from runtime.api.app import App
from runtime.api.routing import Request, Response, Router, json_response

BODY = b'{"type":"half.body","args":[]}'


def call(messages: list[dict[str, Any]]) -> tuple[list[bytes], dict[str, Any]]:
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

    scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]}
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
