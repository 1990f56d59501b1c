"""``PATCH /ojs/v1/jobs/{id}``: change a waiting job's priority (the priority extension's update)."""

from __future__ import annotations

import msgspec

from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import guard_job
from runtime.envelope import NAMED_PRIORITIES, NamedPriority, Priority


class PriorityUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    priority: Priority | NamedPriority


_decoder = msgspec.json.Decoder(PriorityUpdate)


def register(router: Router, services: Services) -> None:
    async def update(request: Request) -> Response:
        """Only available and scheduled jobs (409 for the others). Cost: one script, O(log n)."""
        job_id = request.params["job_id"]
        req: PriorityUpdate = request.decode(_decoder)
        await guard_job(request, services.broker, job_id)
        priority = NAMED_PRIORITIES[req.priority.lower()] if isinstance(req.priority, str) else req.priority
        previous = await services.job_admin.set_priority(job_id, priority)
        return json_response(200, {"id": job_id, "priority": priority, "previous_priority": previous})

    router.add("PATCH", "/ojs/v1/jobs/{job_id}", update)
