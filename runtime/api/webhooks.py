"""Webhook endpoints (ojs-webhooks.md 10): subscriptions, their delivery log, test pings.

A subscription is answered both at the top level (the spec's prose) and under `subscription`
(the conformance suite). Its secret appears only when it is made: on creation and on rotation.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from runtime import timefmt
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.webhooks import SOURCE
from runtime.ids import uuid7
from runtime.webhooks import sender
from runtime.webhooks.model import (
    TEST_EVENT,
    Subscription,
    SubscriptionPatch,
    SubscriptionRequest,
    check_metadata,
    check_url,
)
from runtime.webhooks.signing import new_secret, signed_headers

ROTATION_OVERLAP_MS = 86_400_000  # the old secret signs beside the new one this long (spec 8.3)
_create_decoder = msgspec.json.Decoder(SubscriptionRequest)
_patch_decoder = msgspec.json.Decoder(SubscriptionPatch)


def subscription_view(sub: Subscription) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": sub.id, "url": sub.url, "events": sub.events, "active": sub.active,
        "created_at": timefmt.format_ms(sub.created_at_ms), "updated_at": timefmt.format_ms(sub.updated_at_ms),
        "consecutive_failures": sub.consecutive_failures,
    }
    if sub.filter is not None:
        view["filter"] = msgspec.to_builtins(sub.filter)
    if sub.metadata is not None:
        view["metadata"] = sub.metadata
    if sub.disabled_reason is not None:
        view["disabled_reason"] = sub.disabled_reason
        if sub.disabled_at_ms is not None:
            view["disabled_at"] = timefmt.format_ms(sub.disabled_at_ms)
    return view


def _answer(status: int, sub: Subscription, *, secret: str | None = None, **extra: Any) -> Response:
    view = subscription_view(sub)
    if secret is not None:
        view["secret"] = secret
    return json_response(status, {**view, **extra, "subscription": view})


def register(router: Router, services: Services) -> None:
    webhooks = services.webhooks
    settings = services.settings

    async def create(request: Request) -> Response:
        req: SubscriptionRequest = request.decode(_create_decoder)
        check_url(req.url, allow_http=settings.webhooks_allow_http)
        check_metadata(req.metadata)
        secret = req.secret or new_secret()
        return _answer(201, await webhooks.create(req, secret), secret=secret)

    async def list_subscriptions(request: Request) -> Response:
        views = [subscription_view(sub) for sub in await webhooks.subscriptions()]
        return json_response(200, {"subscriptions": views, "count": len(views)})

    async def get(request: Request) -> Response:
        return _answer(200, await webhooks.get(request.params["id"]))

    async def patch(request: Request) -> Response:
        req: SubscriptionPatch = request.decode(_patch_decoder)
        if isinstance(req.url, str):
            check_url(req.url, allow_http=settings.webhooks_allow_http)
        if isinstance(req.metadata, dict):
            check_metadata(req.metadata)
        return _answer(200, await webhooks.update(request.params["id"], req))

    async def delete(request: Request) -> Response:
        sub = await webhooks.delete(request.params["id"])
        return _answer(200, sub, deleted=True)

    async def rotate(request: Request) -> Response:
        secret = new_secret()
        sub = await webhooks.rotate_secret(request.params["id"], secret, overlap_ms=ROTATION_OVERLAP_MS)
        until = timefmt.format_ms(timefmt.now_ms() + ROTATION_OVERLAP_MS)
        return _answer(200, sub, secret=secret, previous_secret_valid_until=until)

    async def test(request: Request) -> Response:
        sub = await webhooks.get(request.params["id"])
        return json_response(200, await _ping(sub, await webhooks.secrets(sub.id), settings.webhook_timeout_ms))

    async def log(request: Request) -> Response:
        limit = request.query_int("limit", default=50, minimum=1, maximum=settings.webhook_log_length)
        entries = await webhooks.log(request.params["id"], limit=limit)
        return json_response(200, {"deliveries": entries, "count": len(entries)})

    async def recent(request: Request) -> Response:
        limit = request.query_int("limit", default=50, minimum=1, maximum=settings.webhook_log_length)
        wanted = request.query("subscription_id")
        subs = [s for s in await webhooks.subscriptions() if wanted in (None, s.id)]
        entries = [e for log in await webhooks.logs([sub.id for sub in subs], limit=limit) for e in log]
        entries.sort(key=lambda e: str(e.get("attempted_at", "")), reverse=True)
        return json_response(200, {"deliveries": entries[:limit], "count": min(limit, len(entries))})

    async def delivery(request: Request) -> Response:
        return json_response(200, {"delivery": await webhooks.delivery(request.params["id"])})

    async def retry(request: Request) -> Response:
        return json_response(200, {"delivery": await webhooks.retry(request.params["id"])})

    base = "/ojs/v1/webhooks"
    router.add("POST", f"{base}/subscriptions", create)
    router.add("GET", f"{base}/subscriptions", list_subscriptions)
    router.add("GET", f"{base}/subscriptions/{{id}}", get)
    router.add("PATCH", f"{base}/subscriptions/{{id}}", patch)
    router.add("DELETE", f"{base}/subscriptions/{{id}}", delete)
    router.add("POST", f"{base}/subscriptions/{{id}}/test", test)
    router.add("POST", f"{base}/subscriptions/{{id}}/rotate-secret", rotate)
    router.add("GET", f"{base}/subscriptions/{{id}}/deliveries", log)
    router.add("GET", f"{base}/deliveries", recent)
    router.add("GET", f"{base}/deliveries/{{id}}", delivery)
    router.add("POST", f"{base}/deliveries/{{id}}/retry", retry)


async def _ping(sub: Subscription, secrets: tuple[str, ...], timeout_ms: int) -> dict[str, Any]:
    """Send a `webhook.test` event now, outside the delivery queue, and say how it went (6.6)."""
    now = timefmt.now_ms()
    body = msgspec.json.encode({
        "specversion": "1.0", "id": f"evt_{uuid7()}", "type": TEST_EVENT, "source": SOURCE,
        "time": timefmt.format_ms(now), "subject": sub.id, "data": {"subscription_id": sub.id, "message": "ping"},
    })
    headers = signed_headers(subscription_id=sub.id, delivery_id=f"del_{uuid7()}", event_type=TEST_EVENT,
                             secrets_in_use=secrets, body=body, timestamp=int(time.time()))
    result = await sender.send(sub.url, body, headers, timeout_s=timeout_ms / 1000)
    answer: dict[str, Any] = {
        "success": result.status is not None and 200 <= result.status < 300, "status_code": result.status,
        "response_time_ms": result.duration_ms, "response_body": result.response_body,
    }
    if result.error:
        answer["error"] = result.error
    return answer
