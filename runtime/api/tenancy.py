"""Multi-tenancy endpoints and the request's tenant (the X-OJS-Tenant header).

A request with the header acts as that tenant: it enqueues for it, and sees, cancels, changes
(priority, progress) and claims only its jobs (another tenant's job answers 404, as a missing
one would: its existence is not revealed). A request without it is not scoped (an operator, or a deployment without
tenants). The listing and stats are admin reads: GET /ojs/v1/admin/tenants, .../{id},
.../{id}/stats. GET /ojs/v1/queues/{name} with the header counts only that tenant's jobs.
"""

from __future__ import annotations

from typing import Any

from runtime import timefmt
from runtime.api.queues import NON_TERMINAL, checked_queue
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import request_tenant
from runtime.broker.tenants import Tenants, checked_tenant
from runtime.errors import NotFound


def _stats_body(stats: dict[str, Any]) -> dict[str, Any]:
    seen = stats.pop("last_enqueued_at_ms")
    return {**stats, "last_enqueued_at": timefmt.format_ms(seen)}


def register(router: Router, services: Services) -> None:
    tenants = Tenants(services.broker.redis, services.broker.keys)
    admin = services.admin
    max_page = services.settings.max_page_size

    async def stats_of(tenant_id: str) -> dict[str, Any]:
        found = await tenants.stats(checked_tenant(tenant_id, "tenant id"))
        if found is None:
            raise NotFound(f"Tenant '{tenant_id}' not found.")
        return _stats_body(found)

    async def list_tenants(request: Request) -> Response:
        limit = request.query_int("limit", default=50, minimum=1, maximum=max_page)
        offset = request.query_int("offset", default=0, minimum=0, maximum=10_000_000)
        total, names = await tenants.listing(limit=limit, offset=offset)
        listed = [await stats_of(name) for name in names]
        return json_response(200, {
            "tenants": listed,
            "pagination": {"total": total, "limit": limit, "offset": offset, "has_more": offset + limit < total},
        })

    async def tenant_detail(request: Request) -> Response:
        return json_response(200, {"tenant": await stats_of(request.params["tenant_id"])})

    async def tenant_stats(request: Request) -> Response:
        return json_response(200, await stats_of(request.params["tenant_id"]))

    async def queue(request: Request) -> Response:
        """A queue's counts; with the header, those of the tenant's jobs in it."""
        name = checked_queue(request)
        tenant = request_tenant(request)
        counts, paused = await admin.queue_counts(name)
        if tenant is not None:
            found = await tenants.stats(tenant, queue=name)
            mine = found["jobs"] if found else {}
            counts = {state: mine.get(state, 0) for state in NON_TERMINAL}  # ended jobs: not kept per tenant
        depth = sum(counts.get(s, 0) for s in NON_TERMINAL)
        status = "paused" if paused else "active"
        body: dict[str, Any] = {"name": name, **counts, "paused": paused, "depth": depth, "status": status}
        if tenant is not None:
            body["tenant_id"] = tenant
        return json_response(200, {"queue": body, "status": status,
                                   "computed_at": timefmt.format_ms(timefmt.now_ms())})

    router.add("GET", "/ojs/v1/admin/tenants", list_tenants)
    router.add("GET", "/ojs/v1/admin/tenants/{tenant_id}", tenant_detail)
    router.add("GET", "/ojs/v1/admin/tenants/{tenant_id}/stats", tenant_stats)
    router.add("GET", "/ojs/v1/queues/{name}", queue)
