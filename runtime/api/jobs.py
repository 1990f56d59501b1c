"""Job endpoints: enqueue (single and batch), info, cancel."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw

from runtime import metrics, timefmt, tracing
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenancy import check_owner, guard_job, request_tenant
from runtime.broker.core import Progress, QueuePressure
from runtime.broker.records import job_from_body, present
from runtime.broker.render import as_hash, encode_job
from runtime.envelope import BatchRequest, ProgressRequest, decode_checkpoint
from runtime.errors import InvalidRequest, OJSError

_batch_decoder = msgspec.json.Decoder(BatchRequest)
_progress_decoder = msgspec.json.Decoder(ProgressRequest)


def _progress_body(job_id: str, p: Progress) -> dict[str, Any]:
    return {
        "job_id": job_id, "state": p.state, "progress": p.progress, "message": p.message,
        "data": Raw(p.data) if p.data else None,
        "updated_at": timefmt.format_ms(p.updated_at_ms) if p.updated_at_ms else None,
    }


def _job_reply(h: dict[bytes, bytes]) -> bytes:
    return b'{"job":' + encode_job(h) + b"}"


def _client_request_id(request: Request) -> str | None:
    given = request.headers.get(b"x-request-id")
    return given.decode("latin-1") if given else None


def _trace_context(request: Request) -> dict[str, str]:
    """W3C trace headers, stored in meta when the job carries no traceparent of its own."""
    return tracing.header_context(request.headers.get(b"traceparent"), request.headers.get(b"tracestate"))


def _pressure_headers(pressure: QueuePressure | None) -> list[tuple[bytes, bytes]]:
    """The backpressure extension's warning: a bounded queue past its threshold."""
    if pressure is None:
        return []
    return [
        (b"x-ojs-queue-depth", str(pressure.depth).encode()),
        (b"x-ojs-queue-bound", str(pressure.bound).encode()),
        (b"x-ojs-queue-pressure", f"{min(1.0, pressure.depth / pressure.bound):.2f}".encode()),
    ]


def register(router: Router, services: Services) -> None:
    broker = services.broker
    settings = services.settings

    async def enqueue(request: Request) -> Response:
        now = timefmt.now_ms()
        job = job_from_body(
            request.body, now_ms=now, request_id=_client_request_id(request), trace_context=_trace_context(request),
            tenant=request_tenant(request),
        )
        outcome = await broker.enqueue([job], now_ms=now)
        (done,) = outcome
        if done.deduplicated:
            existing = encode_job(await broker.get(done.job_id))
            return json_response(200, b'{"job":' + existing + b',"deduplicated":true}')
        location = f"/ojs/v1/jobs/{job.id}".encode()
        return json_response(
            201, _job_reply(as_hash(job)), [(b"location", location), *_pressure_headers(outcome.pressure)],
        )

    async def enqueue_batch(request: Request) -> Response:
        batch: BatchRequest = request.decode(_batch_decoder)
        if not batch.jobs:
            raise InvalidRequest("jobs must contain at least one job")
        if len(batch.jobs) > settings.max_batch_size:
            raise InvalidRequest(f"A batch holds at most {settings.max_batch_size} jobs.")
        now = timefmt.now_ms()
        jobs = []
        trace_context = _trace_context(request)
        tenant = request_tenant(request)
        for index, raw in enumerate(batch.jobs):
            try:
                jobs.append(job_from_body(bytes(raw), now_ms=now, request_id=_client_request_id(request),
                                          trace_context=trace_context, tenant=tenant))
            except OJSError as err:
                err.message = f"jobs[{index}]: {err.message}"
                raise
        outcomes = await broker.enqueue(jobs, now_ms=now)
        rendered = [
            encode_job(await broker.get(done.job_id)) if done.deduplicated else encode_job(as_hash(job))
            for job, done in zip(jobs, outcomes, strict=False)
        ]
        body = b'{"jobs":[' + b",".join(rendered) + b'],"count":'
        return json_response(201, body + str(len(jobs)).encode() + b"}", _pressure_headers(outcomes.pressure))

    async def info(request: Request) -> Response:
        fields = await broker.get(request.params["job_id"])
        check_owner(request, request.params["job_id"], fields.get(b"tenant"))
        return json_response(200, _job_reply(fields))

    async def cancel(request: Request) -> Response:
        job_id = request.params["job_id"]
        await guard_job(request, broker, job_id)
        await broker.cancel(job_id)
        fields = await broker.get(job_id)
        metrics.JOBS_CANCELLED.labels(fields.get(b"queue", b"").decode(), fields.get(b"type", b"").decode()).inc()
        return json_response(200, _job_reply(fields))

    async def put_progress(request: Request) -> Response:
        req: ProgressRequest = request.decode(_progress_decoder)
        await guard_job(request, broker, request.params["job_id"])
        if req.progress is None and req.message is None and not present(req.data) and not present(req.checkpoint):
            raise InvalidRequest("Send at least one of progress, message, data, checkpoint.")
        value = req.progress / 100 if req.progress is not None and req.progress > 1 and req.percent else req.progress
        if present(req.checkpoint):
            try:  # the decoder the pool uses at the claim: what is stored here, it can read
                decode_checkpoint(bytes(req.checkpoint))
            except msgspec.MsgspecError as err:
                raise InvalidRequest(f"Invalid request: checkpoint: {err}") from None
        state = await broker.progress(
            request.params["job_id"], value=value, message=req.message,
            data=bytes(req.data) if present(req.data) else None,
            checkpoint=bytes(req.checkpoint) if present(req.checkpoint) else None,
        )
        return json_response(200, _progress_body(request.params["job_id"], state))

    async def get_progress(request: Request) -> Response:
        await guard_job(request, broker, request.params["job_id"])
        state = await broker.read_progress(request.params["job_id"])
        return json_response(200, _progress_body(request.params["job_id"], state))

    router.add("POST", "/ojs/v1/jobs", enqueue)
    router.add("PUT", "/ojs/v1/jobs/{job_id}/progress", put_progress)
    router.add("GET", "/ojs/v1/jobs/{job_id}/progress", get_progress)
    router.add("POST", "/ojs/v1/jobs/batch", enqueue_batch)
    router.add("GET", "/ojs/v1/jobs/{job_id}", info)
    router.add("DELETE", "/ojs/v1/jobs/{job_id}", cancel)
    router.add("POST", "/ojs/v1/jobs/{job_id}/cancel", cancel)
