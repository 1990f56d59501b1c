"""Queue, dead letter and event endpoints."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from runtime import timefmt
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import guard_job, request_tenant
from runtime.broker.render import encode_job
from runtime.envelope import QUEUE_PATTERN
from runtime.errors import InvalidRequest

_queue_name = re.compile(QUEUE_PATTERN)
NON_TERMINAL = ("available", "active", "scheduled", "retryable", "pending")
MAX_OFFSET = 10_000_000
_stream_id = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?$")
_UINT64_MAX = 2**64 - 1


def _event_cursor(request: Request) -> str | None:
    """The events cursor is a stream entry id (`ms-seq`, as returned in `cursor`)."""
    value = request.query("after") or request.query("cursor")
    if value is None or value == "":
        return None
    if not _stream_id.match(value) or any(int(p) > _UINT64_MAX for p in value.split("-")):
        raise InvalidRequest("Query parameter 'after' must be a cursor returned by this endpoint.")
    return value


def checked_queue(request: Request) -> str:
    name = request.params["name"]
    if len(name) > 128 or not _queue_name.match(name):
        raise InvalidRequest(f"Invalid queue name '{name[:128]}'.")
    return name


def _pagination(total: int, limit: int, offset: int) -> dict[str, Any]:
    has_more = offset + limit < total
    page: dict[str, Any] = {"total": total, "limit": limit, "offset": offset, "has_more": has_more}
    if has_more:
        page["next_cursor"] = str(offset + limit)
    return page


def register(router: Router, services: Services) -> None:
    admin = services.admin
    max_page = services.settings.max_page_size

    def page_args(request: Request, default: int) -> tuple[int, int]:
        limit = request.query_int("limit", default=default, minimum=1, maximum=max_page)
        # The cursor of these lists is an offset, bounded like one.
        cursor = request.query_int("cursor", default=0, minimum=0, maximum=MAX_OFFSET)
        offset = request.query_int("offset", default=cursor, minimum=0, maximum=MAX_OFFSET)
        return limit, offset

    async def list_queues(request: Request) -> Response:
        limit, offset = page_args(request, 50)
        queues = await admin.queues()
        return json_response(200, {
            "queues": queues[offset : offset + limit], "pagination": _pagination(len(queues), limit, offset),
        })

    async def stats(request: Request) -> Response:
        name = checked_queue(request)
        counts, paused = await admin.queue_counts(name)
        depth = sum(counts[s] for s in NON_TERMINAL)
        status = "paused" if paused else "active"
        queue = {"name": name, **counts, "paused": paused, "depth": depth, "status": status}
        # Three shapes in one body: openapi's `queue` object (what the conformance suites read),
        # the prose's `status`, `stats` and `computed_at`, and the counts flat at the top level,
        # where one official SDK reads them. The prose's `queue` is a string, which the object
        # takes the place of: the name is `queue.name`, `stats.queue` and `name`.
        return json_response(200, {
            **queue,
            "queue": queue,
            "stats": {"queue": name, "depth": depth, **counts},
            "computed_at": timefmt.format_ms(timefmt.now_ms()),
        })

    async def pause(request: Request) -> Response:
        name = checked_queue(request)
        await admin.set_paused(name, True)
        now = timefmt.format_ms(timefmt.now_ms())
        return json_response(200, {"queue": {"name": name, "paused": True, "paused_at": now}, "status": "paused"})

    async def resume(request: Request) -> Response:
        name = checked_queue(request)
        await admin.set_paused(name, False)
        now = timefmt.format_ms(timefmt.now_ms())
        return json_response(200, {"queue": {"name": name, "paused": False, "resumed_at": now}, "status": "active"})

    async def dead_letter(request: Request) -> Response:
        limit, offset = page_args(request, 50)
        total, jobs = await admin.dead_letter_page(queue=request.query("queue"), limit=limit, offset=offset)
        tenant = request_tenant(request)
        if tenant is not None:  # a tenant sees only its own dead letters (the page may hold fewer)
            jobs = [h for h in jobs if h.get(b"tenant") == tenant.encode()]
        page = _pagination(total, limit, offset)
        jobs_json = b",".join(encode_job(h) for h in jobs)
        body = b'{"jobs":[' + jobs_json + b'],"pagination":' + msgspec.json.encode(page) + b"}"
        return json_response(200, body)

    async def dead_letter_retry(request: Request) -> Response:
        job_id = request.params["job_id"]
        await guard_job(request, services.broker, job_id)
        await admin.dead_letter_retry(job_id)
        return json_response(200, b'{"job":' + encode_job(await services.broker.get(job_id)) + b"}")

    async def dead_letter_delete(request: Request) -> Response:
        job_id = request.params["job_id"]
        await guard_job(request, services.broker, job_id)
        await admin.dead_letter_delete(job_id)
        return json_response(200, {"deleted": True, "job_id": job_id, "id": job_id})

    async def events(request: Request) -> Response:
        limit = request.query_int("limit", default=100, minimum=1, maximum=1000)
        found, cursor, has_more = await admin.events(
            after=_event_cursor(request), limit=limit,
            types=request.query_list("types") or request.query_list("type"),
            queues=request.query_list("queues") or request.query_list("queue"),
            job_types=request.query_list("job_types"),
        )
        return json_response(200, {"events": found, "cursor": cursor, "has_more": has_more})

    router.add("GET", "/ojs/v1/queues", list_queues)
    router.add("GET", "/ojs/v1/queues/{name}/stats", stats)
    router.add("POST", "/ojs/v1/queues/{name}/pause", pause)
    router.add("POST", "/ojs/v1/queues/{name}/resume", resume)
    router.add("GET", "/ojs/v1/dead-letter", dead_letter)
    router.add("POST", "/ojs/v1/dead-letter/{job_id}/retry", dead_letter_retry)
    router.add("DELETE", "/ojs/v1/dead-letter/{job_id}", dead_letter_delete)
    router.add("GET", "/ojs/v1/events", events)
