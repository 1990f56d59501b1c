"""Admin job endpoints: list and search, detail, cancel, retry, delete, and bulk actions."""

from __future__ import annotations

import msgspec

from runtime.api.admin.common import FilterBody, checked_filter, listing_page, query_filter
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.job_admin import BULK_ACTIONS, MAX_BULK, summary
from runtime.broker.render import encode_job
from runtime.errors import InvalidRequest, NotFound


class BulkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    filter: FilterBody | None = None
    ids: list[str] | None = None
    confirm: bool = False
    dry_run: bool = False
    cursor: str | None = None
    limit: int = MAX_BULK


_bulk_decoder = msgspec.json.Decoder(BulkRequest)


def register(router: Router, services: Services) -> None:
    job_admin = services.job_admin
    broker = services.broker

    async def list_jobs(request: Request) -> Response:
        """A page of job summaries from the state indexes (see runtime.broker.job_listing for the
        cost: bounded per call, whatever the number of jobs)."""
        found, page_info = await listing_page(job_admin.listing, query_filter(request), request)
        return json_response(200, {"items": found.items, "pagination": page_info})

    async def detail(request: Request) -> Response:
        """The whole envelope, unwrapped, with the error history and progress. One HGETALL."""
        return json_response(200, encode_job(await broker.get(request.params["job_id"])))

    async def job_reply(job_id: str) -> Response:
        return json_response(200, b'{"job":' + encode_job(await broker.get(job_id)) + b"}")

    async def cancel(request: Request) -> Response:
        job_id = request.params["job_id"]
        await broker.cancel(job_id)
        return await job_reply(job_id)

    async def retry(request: Request) -> Response:
        job_id = request.params["job_id"]
        await job_admin.retry(job_id)
        return await job_reply(job_id)

    async def delete(request: Request) -> Response:
        job_id = request.params["job_id"]
        await job_admin.delete(job_id)
        return json_response(200, {"deleted": True, "id": job_id, "job_id": job_id})

    async def bulk(request: Request) -> Response:
        """Retry, cancel or delete the jobs named by `ids` or matching `filter`, at most
        `limit` (1,000) per call; `dry_run` lists what would change. Repeat while has_more."""
        action = request.params["action"]
        if action not in BULK_ACTIONS:
            raise NotFound(f"No bulk action '{action}'; use one of {', '.join(BULK_ACTIONS)}.")
        req: BulkRequest = request.decode(_bulk_decoder)
        if req.confirm is not True and not req.dry_run:
            raise InvalidRequest(f"Bulk {action} changes many jobs: send \"confirm\": true (or \"dry_run\": true).")
        if (req.filter is None) == (req.ids is None):
            raise InvalidRequest("Send either filter or ids.")
        if not 1 <= req.limit <= MAX_BULK:
            raise InvalidRequest(f"limit must be between 1 and {MAX_BULK}.")
        if req.ids is not None and (len(req.ids) > MAX_BULK or any(not i or len(i) > 256 for i in req.ids)):
            raise InvalidRequest(f"ids holds at most {MAX_BULK} job ids, each 1 to 256 characters.")
        flt = checked_filter(req.filter) if req.filter is not None else None
        result = await job_admin.bulk(action, flt=flt, ids=req.ids, cursor=req.cursor, dry_run=req.dry_run,
                                      limit=req.limit)
        return json_response(200, summary(result))

    router.add("GET", "/ojs/v1/admin/jobs", list_jobs)
    router.add("POST", "/ojs/v1/admin/jobs/bulk/{action}", bulk)
    router.add("GET", "/ojs/v1/admin/jobs/{job_id}", detail)
    router.add("DELETE", "/ojs/v1/admin/jobs/{job_id}", delete)
    router.add("POST", "/ojs/v1/admin/jobs/{job_id}/cancel", cancel)
    router.add("POST", "/ojs/v1/admin/jobs/{job_id}/retry", retry)
