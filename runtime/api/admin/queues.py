"""Admin queue endpoints: list, detail, pause and resume, configuration, purge."""

from __future__ import annotations

from typing import Annotated

import msgspec

from runtime import timefmt
from runtime.api.admin.common import MAX_KEPT, page_args, pagination, purge_cursor, time_ms
from runtime.api.queues import checked_queue
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.job_admin import ENDED_STATES, PurgeCursor
from runtime.broker.queue_config import QueueConfigRequest, QueueRateLimitRequest
from runtime.errors import InvalidRequest, NotFound

_config_decoder = msgspec.json.Decoder(QueueConfigRequest)
_rate_limit_decoder = msgspec.json.Decoder(QueueRateLimitRequest)


class PurgeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # At most one of each: a request cannot multiply the work of one call
    states: Annotated[list[str], msgspec.Meta(max_length=len(ENDED_STATES))] = msgspec.field(
        default_factory=lambda: list(ENDED_STATES))
    older_than: str | None = None
    confirm: bool = False
    cursor: Annotated[str, msgspec.Meta(max_length=64)] | None = None  # the next_cursor of the call before


_purge_decoder = msgspec.json.Decoder(PurgeRequest)
_purge_cursor_decoder = msgspec.json.Decoder(PurgeCursor)
_purge_cursor_encoder = msgspec.json.Encoder()


def register(router: Router, services: Services) -> None:
    admin = services.admin

    async def views(names: list[str]) -> list[dict[str, object]]:
        return await admin.queue_views(names, await services.history.per_minute())

    async def list_queues(request: Request) -> Response:
        """All queues by name, a page of them with their counts. Cost: O(queues) names, then
        five small reads per queue on the page."""
        page, per_page = page_args(request)
        names = await admin.queue_names()
        shown = names[(page - 1) * per_page: page * per_page]
        return json_response(200, {"items": await views(shown), "pagination": pagination(len(names), page, per_page)})

    async def detail(request: Request) -> Response:
        name = checked_queue(request)
        if name not in await admin.queue_names():
            raise NotFound(f"Queue '{name}' not found.")
        (view,) = await views([name])
        return json_response(200, view)

    async def set_paused(request: Request, paused: bool) -> Response:
        name = checked_queue(request)
        await admin.set_paused(name, paused)
        (view,) = await views([name])
        body: dict[str, object] = {"name": name, "paused": paused, "queue": view}
        body["paused_at" if paused else "resumed_at"] = timefmt.format_ms(timefmt.now_ms())
        return json_response(200, body)

    async def pause(request: Request) -> Response:
        return await set_paused(request, True)

    async def resume(request: Request) -> Response:
        return await set_paused(request, False)

    async def put_config(request: Request) -> Response:
        name = checked_queue(request)
        req: QueueConfigRequest = request.decode(_config_decoder)
        configuration = await services.queue_config.update(name, req)
        return json_response(200, {"name": name, "configuration": configuration})

    async def put_rate_limit(request: Request) -> Response:
        """The queue-level limits alone (concurrency, rate), as the rate-limiting extension puts them."""
        name = checked_queue(request)
        req: QueueRateLimitRequest = request.decode(_rate_limit_decoder)
        configuration = await services.queue_config.update(name, req.as_config())
        return json_response(200, {"name": name, "concurrency": configuration["concurrency"],
                                   "rate": configuration["rate_limit"], "configuration": configuration})

    async def purge(request: Request) -> Response:
        """Delete the queue's ended jobs in the given states (that ended before older_than),
        oldest first, at most 10,000 per call (has_more: call again with next_cursor, which
        starts past the jobs kept at the oldest end). Cost: the jobs deleted."""
        name = checked_queue(request)
        req: PurgeRequest = request.decode(_purge_decoder)
        if req.confirm is not True:
            raise InvalidRequest("Purge deletes jobs for good: send \"confirm\": true.")
        bad = [s for s in req.states if s not in ENDED_STATES]
        if bad or not req.states or len(set(req.states)) != len(req.states):
            raise InvalidRequest(f"states must be some of {', '.join(ENDED_STATES)}, each once (live jobs are "
                                 "cancelled first, with a bulk cancel).")
        start = purge_cursor(req.cursor, _purge_cursor_decoder, what="the same states",
                             valid=lambda c: 0 <= c.state < len(req.states) and c.score >= 0 and 0 <= c.kept <= MAX_KEPT)
        deleted, stopped = await services.job_admin.purge(name, req.states, start=start,
                                                          older_than_ms=time_ms(req.older_than, "older_than"))
        cursor = _purge_cursor_encoder.encode(stopped).decode() if stopped is not None else None
        return json_response(200, {"purged_count": deleted, "states": req.states, "has_more": cursor is not None,
                                   "next_cursor": cursor})

    router.add("GET", "/ojs/v1/admin/queues", list_queues)
    router.add("GET", "/ojs/v1/admin/queues/{name}", detail)
    router.add("POST", "/ojs/v1/admin/queues/{name}/pause", pause)
    router.add("POST", "/ojs/v1/admin/queues/{name}/resume", resume)
    router.add("PUT", "/ojs/v1/admin/queues/{name}/config", put_config)
    router.add("PUT", "/ojs/v1/admin/queues/{name}/rate-limit", put_rate_limit)
    router.add("DELETE", "/ojs/v1/admin/queues/{name}/jobs", purge)
