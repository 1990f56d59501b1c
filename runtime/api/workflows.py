"""Workflow endpoints: create (chain, group, batch, or steps with depends_on), get, cancel."""

from __future__ import annotations

import msgspec

from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.workflows import WorkflowRequest

_decoder = msgspec.json.Decoder(WorkflowRequest)


def register(router: Router, services: Services) -> None:
    workflows = services.workflows

    async def create(request: Request) -> Response:
        req: WorkflowRequest = request.decode(_decoder)
        view = await workflows.create(req)
        location = f"/ojs/v1/workflows/{view['id']}".encode()
        return json_response(201, {"workflow": view}, [(b"location", location)])

    async def get(request: Request) -> Response:
        return json_response(200, {"workflow": await workflows.get(request.params["workflow_id"])})

    async def cancel(request: Request) -> Response:
        view = await workflows.cancel(request.params["workflow_id"])
        cancelled = sum(1 for s in view["steps"] if s["state"] == "cancelled")
        return json_response(200, {"workflow": {**view, "steps_cancelled": cancelled}})

    router.add("POST", "/ojs/v1/workflows", create)
    router.add("GET", "/ojs/v1/workflows/{workflow_id}", get)
    router.add("DELETE", "/ojs/v1/workflows/{workflow_id}", cancel)
