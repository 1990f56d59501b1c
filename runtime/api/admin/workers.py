"""Admin worker endpoints: list, detail (with the jobs held), quiet, deregister a stale worker."""

from __future__ import annotations

from runtime import timefmt
from runtime.api.admin.common import page_args, pagination
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.errors import Conflict


def register(router: Router, services: Services) -> None:
    admin = services.admin
    settings = services.settings
    stale_after_ms = settings.worker_stale_heartbeats * settings.worker_heartbeat_interval_ms

    async def list_workers(request: Request) -> Response:
        """Most recent heartbeat first. Cost: one read per registered worker for the summary,
        one HGETALL per worker on the page (dead workers leave the registry)."""
        page, per_page = page_args(request)
        total, items, summary = await admin.workers(offset=(page - 1) * per_page, limit=per_page,
                                                    now_ms=timefmt.now_ms(), stale_after_ms=stale_after_ms)
        return json_response(200, {"items": items, "summary": summary, "pagination": pagination(total, page, per_page)})

    async def detail(request: Request) -> Response:
        worker_id = request.params["worker_id"]
        view = await admin.worker_view(worker_id, now_ms=timefmt.now_ms(), stale_after_ms=stale_after_ms)
        view["jobs"] = await services.job_admin.listing.summaries(view["job_ids"][:100])
        return json_response(200, view)

    async def quiet(request: Request) -> Response:
        """Stored on the worker; its next heartbeat answers with the directive `quiet`."""
        worker_id = request.params["worker_id"]
        await admin.set_directive(worker_id, "quiet")
        return json_response(200, {"id": worker_id, "directive": "quiet"})

    async def deregister(request: Request) -> Response:
        """A stale worker's record removed and its jobs requeued as a worker loss; a worker that
        still beats is refused (quiet it first, and let it stop)."""
        worker_id = request.params["worker_id"]
        await admin.worker_view(worker_id, now_ms=timefmt.now_ms(), stale_after_ms=stale_after_ms)  # 404 if unknown
        requeued = await services.silent_workers.deregister(worker_id, missed=settings.worker_stale_heartbeats)
        if requeued is None:
            raise Conflict(f"Worker '{worker_id}' is not stale (it sent a heartbeat within the last "
                           f"{stale_after_ms // 1000} s); quiet it instead.")
        return json_response(200, {"id": worker_id, "deregistered": True, "requeued": requeued})

    router.add("GET", "/ojs/v1/admin/workers", list_workers)
    router.add("GET", "/ojs/v1/admin/workers/{worker_id}", detail)
    router.add("POST", "/ojs/v1/admin/workers/{worker_id}/quiet", quiet)
    router.add("DELETE", "/ojs/v1/admin/workers/{worker_id}", deregister)
