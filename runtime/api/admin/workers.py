"""Admin worker endpoints: list, detail (with the jobs held), quiet, deregister a stale worker."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime import timefmt
from runtime.api.admin.common import page_args, pagination
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.pools import PoolRequest, Pools, definition_from
from runtime.broker.pools import view as pool_view
from runtime.errors import Conflict, InvalidRequest


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

    pools = Pools(services.broker.redis, services.broker.keys)
    _pool_decoder = msgspec.json.Decoder(PoolRequest)

    async def pool_views() -> list[dict[str, object]]:
        definitions = await pools.definitions()
        workers = await admin.all_workers(now_ms=timefmt.now_ms(), stale_after_ms=stale_after_ms)
        by_pool: dict[str, list[dict[str, Any]]] = {}
        for worker in workers:
            if worker["pool"]:
                by_pool.setdefault(worker["pool"], []).append(worker)
        names = sorted(set(definitions) | set(by_pool))
        return [pool_view(name, definitions.get(name), by_pool.get(name, [])) for name in names]

    async def list_pools(request: Request) -> Response:
        """The pools of ojs-run supervisors (by OJS_POOL_NAME) and the stored definitions. Cost:
        the worker registry and the definitions hash, both small."""
        return json_response(200, {"items": await pool_views()})

    async def put_pool(request: Request) -> Response:
        """Store a pool's definition; its running processes apply it at their next heartbeat."""
        name = request.params["name"]
        if len(name) > 128 or not name.strip():
            raise InvalidRequest("A pool name is 1 to 128 characters.")
        definition = definition_from(name, request.decode(_pool_decoder))
        created = await pools.put(definition)
        (view,) = [v for v in await pool_views() if v["name"] == name]
        return json_response(201 if created else 200, {"pool": view})

    async def scheduling_stats(request: Request) -> Response:
        """What each queue was given over the last minute: claims, their share, the mean wait
        from enqueue to claim, and the jobs active now. Cost: two HGETALLs and the queue counts."""
        last = await services.history.last_minute()
        names = await admin.queue_names()
        active = await admin.state_counts(names, "active")
        total = sum(m["started"] for m in last.values())
        queues = []
        for name in sorted(set(last) | set(active)):
            started = last.get(name, {}).get("started", 0)
            waited = last.get(name, {}).get("wait_ms", 0)
            queues.append({
                "name": name, "dispatch_count_1m": started,
                "dispatch_ratio_1m": round(started / total, 4) if total else 0.0,
                "avg_wait_ms": round(waited / started, 1) if started else None,
                "active_jobs": active.get(name, 0),
            })
        return json_response(200, {"stats": {"dispatched_1m": total, "queues": len(queues),
                                             "pools": len(await pool_views())},
                                   "queues": queues, "window": "PT1M"})

    router.add("GET", "/ojs/v1/admin/pools", list_pools)
    router.add("PUT", "/ojs/v1/admin/pools/{name}", put_pool)
    router.add("GET", "/ojs/v1/admin/scheduling/stats", scheduling_stats)
    router.add("GET", "/ojs/v1/admin/workers", list_workers)
    router.add("GET", "/ojs/v1/admin/workers/{worker_id}", detail)
    router.add("POST", "/ojs/v1/admin/workers/{worker_id}/quiet", quiet)
    router.add("DELETE", "/ojs/v1/admin/workers/{worker_id}", deregister)
