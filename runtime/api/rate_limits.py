"""Rate-limit partitions (the rate-limiting extension): inspect, list, override."""

from __future__ import annotations

import msgspec

from runtime import timefmt
from runtime.api.admin.common import page_args
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.rate_limits import OverrideRequest, check_key

_override_decoder = msgspec.json.Decoder(OverrideRequest)


def register(router: Router, services: Services) -> None:
    limits = services.rate_limits

    async def inspect(request: Request) -> Response:
        """One partition's state; a key with no jobs yet answers 200 with every count 0."""
        key = check_key(request.params["key"])
        return json_response(200, await limits.inspect(key, timefmt.now_ms()))

    async def list_keys(request: Request) -> Response:
        """Keys by last use, a page at a time. Cost: one page of the key index, a few reads each."""
        page, per_page = page_args(request)
        return json_response(200, await limits.list(page, per_page, timefmt.now_ms()))

    async def override(request: Request) -> Response:
        """A temporary concurrency cap for a key (0 stops it), until expires_at; {"clear": true} ends it."""
        key = check_key(request.params["key"])
        req: OverrideRequest = request.decode(_override_decoder)
        return json_response(200, await limits.override(key, req, timefmt.now_ms()))

    async def clear_override(request: Request) -> Response:
        key = check_key(request.params["key"])
        await limits.override(key, OverrideRequest(clear=True), timefmt.now_ms())
        return Response(204, b"")

    router.add("GET", "/ojs/v1/rate-limits", list_keys)
    router.add("DELETE", "/ojs/v1/rate-limits/{key}/override", clear_override)
    router.add("GET", "/ojs/v1/rate-limits/{key}", inspect)
    router.add("PUT", "/ojs/v1/rate-limits/{key}", override)
