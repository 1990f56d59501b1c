"""Admin dead letter endpoints: list with filters, stats, retry and delete one or many, purge."""

from __future__ import annotations

from collections import Counter

import msgspec

from runtime.api.admin.common import (
    MAX_KEPT,
    FilterBody,
    checked_filter,
    listing_page,
    purge_cursor,
    query_filter,
    time_ms,
)
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.job_admin import MAX_BULK, MAX_PURGE, PurgeCursor, summary
from runtime.broker.job_listing import JobFilter
from runtime.broker.render import encode_job
from runtime.errors import InvalidRequest, NotFound

STATS_SAMPLE = 1_000  # newest dead letters whose error types are counted


class DeadLetterBulk(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    filter: FilterBody | None = None
    ids: list[str] | None = None
    confirm: bool = False
    dry_run: bool = False
    limit: int = MAX_BULK
    cursor: str | None = None


class DeadLetterPurge(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    queue: str | None = None
    error_type: str | None = None
    type: str | None = None
    older_than: str | None = None
    confirm: bool = False
    cursor: str | None = None  # the next_cursor of the call before


class _PurgeCursor(msgspec.Struct, array_like=True, frozen=True):
    """Where a purge of every queue's dead letters goes on: the queue it stopped in (queues go
    in name order), and there, as in a queue purge's cursor, the millisecond of the last dead
    letter it kept (a member of a running workflow) and how many of that millisecond it kept."""

    queue: str
    score: int
    kept: int


_bulk_decoder = msgspec.json.Decoder(DeadLetterBulk)
_purge_decoder = msgspec.json.Decoder(DeadLetterPurge)
_purge_cursor_decoder = msgspec.json.Decoder(_PurgeCursor)
_purge_cursor_encoder = msgspec.json.Encoder()


def _discarded(flt: JobFilter) -> JobFilter:
    return msgspec.structs.replace(flt, state="discarded")


def register(router: Router, services: Services) -> None:
    admin = services.admin
    job_admin = services.job_admin
    broker = services.broker

    async def list_dead(request: Request) -> Response:
        """Dead letters (discarded jobs, dead-lettered or not), newest first, whole envelopes.
        Cost: the listing's (bounded), then one HGETALL per job on the page."""
        found, page_info = await listing_page(job_admin.listing, _discarded(query_filter(request)), request,
                                              ids_only=True)
        async with broker.redis.pipeline(transaction=False) as pipe:
            for item in found.items:
                pipe.hgetall(broker.keys.job(item["id"]))
            hashes = [h for h in await pipe.execute() if h]
        body = b'{"items":[' + b",".join(encode_job(h) for h in hashes) + b'],"pagination":'
        return json_response(200, body + msgspec.json.encode(page_info) + b"}")

    async def stats(request: Request) -> Response:
        """Totals by queue (exact, from the counters) and by error type among the newest 1,000
        (a bounded read: `sampled` says how many)."""
        names = await admin.queue_names()
        by_queue = {name: n for name, n in (await admin.state_counts(names, "discarded")).items() if n}
        newest = await job_admin.listing.page(JobFilter(state="discarded"), limit=STATS_SAMPLE, ids_only=True)
        ids = [item["id"] for item in newest.items]
        by_error = Counter(await job_admin.listing.error_types(ids))
        ends = await job_admin.listing.summaries(ids[:1])
        oldest = await job_admin.listing.page(JobFilter(state="discarded"), limit=1, order="asc")
        return json_response(200, {
            "total": sum(by_queue.values()), "by_queue": by_queue,
            "by_error_type": dict(by_error.most_common()),
            "sampled": len(ids),
            "oldest_at": oldest.items[0].get("discarded_at") if oldest.items else None,
            "newest_at": ends[0].get("discarded_at") if ends else None,
        })

    async def discarded_only(job_id: str) -> None:
        if await broker.redis.hget(broker.keys.job(job_id), "state") != b"discarded":
            raise NotFound(f"Job '{job_id}' is not in the dead letter queue.")

    async def retry_one(request: Request) -> Response:
        job_id = request.params["job_id"]
        await discarded_only(job_id)
        await job_admin.retry(job_id)
        return json_response(200, b'{"job":' + encode_job(await broker.get(job_id)) + b"}")

    async def delete_one(request: Request) -> Response:
        job_id = request.params["job_id"]
        await discarded_only(job_id)
        await job_admin.delete(job_id)
        return json_response(204, b"")

    async def bulk(request: Request, action: str) -> Response:
        req: DeadLetterBulk = request.decode(_bulk_decoder, allow_empty=True)
        if req.confirm is not True and not req.dry_run:
            raise InvalidRequest(f"Bulk {action} changes many jobs: send \"confirm\": true (or \"dry_run\": true).")
        if req.filter is not None and req.ids is not None:
            raise InvalidRequest("Send either filter or ids, not both.")
        if not 1 <= req.limit <= MAX_BULK or (req.ids is not None and len(req.ids) > MAX_BULK):
            raise InvalidRequest(f"At most {MAX_BULK} jobs per call.")
        flt = None if req.ids is not None else _discarded(checked_filter(req.filter or FilterBody()))
        result = await job_admin.bulk(action, flt=flt, ids=req.ids, cursor=req.cursor, dry_run=req.dry_run,
                                      limit=req.limit, only_state="discarded")
        return json_response(200, summary(result))

    async def retry_many(request: Request) -> Response:
        return await bulk(request, "retry")

    async def purge(request: Request) -> Response:
        """Delete dead letters (discarded jobs) of one queue or all, optionally only those of an
        error type or job type, or discarded before older_than; at most 1,000 per call (has_more:
        call again)."""
        req: DeadLetterPurge = request.decode(_purge_decoder)
        if req.confirm is not True:
            raise InvalidRequest("Purge deletes jobs for good: send \"confirm\": true.")
        older = time_ms(req.older_than, "older_than")
        if req.error_type is None and req.type is None:
            resume = purge_cursor(req.cursor, _purge_cursor_decoder, what="every queue's dead letters",
                                  valid=lambda c: c.score >= 0 and 0 <= c.kept <= MAX_KEPT)
            queues = [req.queue] if req.queue else await admin.queue_names()
            if resume is not None:
                queues = [q for q in queues if q >= resume.queue]
            deleted, stopped = 0, None
            for queue in queues:
                start = (PurgeCursor(0, resume.score, resume.kept)
                         if resume is not None and queue == resume.queue else None)
                gone, at = await job_admin.purge(queue, ["discarded"], older_than_ms=older,
                                                 budget=MAX_PURGE - deleted, start=start)
                deleted += gone
                if at is not None:
                    stopped = _PurgeCursor(queue, at.score, at.kept)
                    break
            cursor = _purge_cursor_encoder.encode(stopped).decode() if stopped is not None else None
            return json_response(200, {"purged_count": deleted, "has_more": cursor is not None, "next_cursor": cursor})
        flt = _discarded(checked_filter(FilterBody(queue=req.queue, error_type=req.error_type, type=req.type)))
        result = await job_admin.bulk("delete", flt=flt, ids=None, cursor=req.cursor, dry_run=False)
        return json_response(200, {"purged_count": result.succeeded, "has_more": result.has_more,
                                   "next_cursor": result.next_cursor})

    router.add("GET", "/ojs/v1/admin/dead-letter", list_dead)
    router.add("DELETE", "/ojs/v1/admin/dead-letter", purge)
    router.add("GET", "/ojs/v1/admin/dead-letter/stats", stats)
    router.add("POST", "/ojs/v1/admin/dead-letter/retry", retry_many)
    router.add("POST", "/ojs/v1/admin/dead-letter/{job_id}/retry", retry_one)
    router.add("DELETE", "/ojs/v1/admin/dead-letter/{job_id}", delete_one)
