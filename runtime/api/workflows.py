"""Workflow endpoints: create (chain, group, batch, or steps with depends_on), get, cancel."""

from __future__ import annotations

import msgspec

from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import request_tenant
from runtime.broker.tenants import Tenants
from runtime.broker.workflows import WorkflowRequest
from runtime.errors import NotFound

_decoder = msgspec.json.Decoder(WorkflowRequest)


def register(router: Router, services: Services) -> None:
    workflows = services.workflows
    tenants = Tenants(services.broker.redis, services.broker.keys)

    async def create(request: Request) -> Response:
        req: WorkflowRequest = request.decode(_decoder)
        view = await workflows.create(req, tenant=request_tenant(request))
        location = f"/ojs/v1/workflows/{view['id']}".encode()
        return json_response(201, {"workflow": view}, [(b"location", location)])

    async def guard(request: Request) -> None:
        """A tenant-scoped request reaches only its own tenant's workflows (404, as for a missing
        one, otherwise): a workflow's tenant is its members'."""
        tenant = request_tenant(request)
        if tenant is None:
            return
        workflow_id = request.params["workflow_id"]
        member = await workflows.first_member(workflow_id)
        if member is not None and await tenants.owner(member) not in (tenant, tenant.encode()):
            raise NotFound(f"Workflow '{workflow_id}' not found.")

    async def get(request: Request) -> Response:
        await guard(request)
        return json_response(200, {"workflow": await workflows.get(request.params["workflow_id"])})

    async def cancel(request: Request) -> Response:
        await guard(request)
        view = await workflows.cancel(request.params["workflow_id"])
        cancelled = sum(1 for s in view["steps"] if s["state"] == "cancelled")
        return json_response(200, {"workflow": {**view, "steps_cancelled": cancelled}})

    router.add("POST", "/ojs/v1/workflows", create)
    router.add("GET", "/ojs/v1/workflows/{workflow_id}", get)
    router.add("DELETE", "/ojs/v1/workflows/{workflow_id}", cancel)
