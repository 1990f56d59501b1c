"""Batch ack for HTTP workers: ``POST /ojs/v1/workers/ack/batch`` with ``{"acks": [...]}``.

Each item is what the single ack (``POST /ojs/v1/workers/ack``) takes (``job_id``, ``result``,
``worker_id``, ``attempt``) and is settled with exactly its fencing: every item goes through
ack.lua, all of them in one script call (one round trip), and each gets its own outcome, so one
item's conflict does not fail the others. The reply follows the per-item shape of the bulk
operations (ojs-bulk-operations.md 5.2): ``total``, ``succeeded``, ``failed`` and ``items`` in
request order; 200 when every item was acknowledged, 207 when some were, 422 when none was. A
batch above ``max_batch_size`` is refused whole (413), before anything runs; a malformed item
fails the whole request (400), also before anything runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from runtime import metrics, timefmt
from runtime.api.app import error_body
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import request_tenant
from runtime.broker.core import AckResult, Completion
from runtime.broker.records import present
from runtime.broker.tenants import Tenants
from runtime.envelope import AckRequest
from runtime.errors import NotFound, OJSError, PayloadTooLarge

PATH = "/ojs/v1/workers/ack/batch"


class AckBatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    acks: Annotated[list[AckRequest], Meta(min_length=1)]


_decoder = msgspec.json.Decoder(AckBatchRequest)


class BatchTooLarge(PayloadTooLarge):
    code = "batch_size_exceeded"
    hint = "Split the acks into batches of at most the max_batch_size given in the details."

    def __init__(self, size: int, maximum: int) -> None:
        super().__init__(f"Batch size {size} exceeds maximum of {maximum}.", details={"max_batch_size": maximum})
        self.headers = ((b"x-ojs-max-batch-size", str(maximum).encode()),)


def _result(raw: msgspec.Raw) -> bytes:
    return bytes(raw).strip() if present(raw) else b""


def _acknowledged(index: int, done: AckResult) -> dict[str, Any]:
    return {"index": index, "id": done.job_id, "job_id": done.job_id, "status": "acknowledged", "acknowledged": True,
            "state": "completed", "completed_at": timefmt.format_ms(done.completed_at_ms)}


def _failed(index: int, job_id: str, err: OJSError, request_id: str) -> dict[str, Any]:
    return {"index": index, "id": job_id, "job_id": job_id, "status": "failed", "acknowledged": False,
            **error_body(err, request_id)}


def register(router: Router, services: Services) -> None:
    broker = services.broker
    settings = services.settings

    async def ack_batch(request: Request) -> Response:
        req: AckBatchRequest = request.decode(_decoder)
        if len(req.acks) > settings.max_batch_size:
            raise BatchTooLarge(len(req.acks), settings.max_batch_size)
        items: list[dict[str, Any] | None] = [None] * len(req.acks)
        owned = list(range(len(req.acks)))
        tenant = request_tenant(request)
        if tenant is not None:  # a tenant settles only its own jobs; any other is not found
            owners = await Tenants(broker.redis, broker.keys).owners([a.job_id for a in req.acks])
            owned = [i for i, owner in enumerate(owners) if owner == tenant]
            for i, owner in enumerate(owners):
                if owner != tenant:
                    job_id = req.acks[i].job_id
                    items[i] = _failed(i, job_id, NotFound(f"Job '{job_id}' not found."), request.request_id)
        if owned:
            completions = [Completion(job_id=req.acks[i].job_id, result=_result(req.acks[i].result),
                                      worker_id=req.acks[i].worker_id or "", attempt=req.acks[i].attempt)
                           for i in owned]
            outcomes = await broker.ack_many(completions)
            for i, outcome in zip(owned, outcomes, strict=True):
                if isinstance(outcome, OJSError):
                    items[i] = _failed(i, req.acks[i].job_id, outcome, request.request_id)
                elif isinstance(outcome, Exception):
                    raise outcome
                else:
                    metrics.job_outcome(outcome.queue, outcome.type, "completed")
                    items[i] = _acknowledged(i, outcome)
        succeeded = sum(1 for item in items if item is not None and item["acknowledged"])
        failed = len(items) - succeeded
        status = 200 if failed == 0 else 207 if succeeded else 422
        return json_response(status, {"total": len(items), "succeeded": succeeded, "failed": failed, "items": items})

    router.add("POST", PATH, ack_batch)


__all__ = ["PATH", "AckBatchRequest", "register"]
