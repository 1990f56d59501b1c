"""Job endpoints: enqueue (single and batch), info, cancel, progress (also as the SDKs post it)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw

from runtime import metrics, timefmt, tracing
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import check_owner, guard_job, request_tenant
from runtime.broker.core import Progress, QueuePressure
from runtime.broker.records import NewJob, job_from_body, present
from runtime.broker.render import as_hash, encode_job
from runtime.envelope import BatchRequest, ProgressRequest, WorkerProgressRequest, decode_checkpoint
from runtime.errors import InvalidRequest, OJSError

_batch_decoder = msgspec.json.Decoder(BatchRequest)
_progress_decoder = msgspec.json.Decoder(ProgressRequest)
_meta_decoder = msgspec.json.Decoder(dict[str, Any])
_worker_progress_decoder = msgspec.json.Decoder(WorkerProgressRequest)


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


def _describe(producer: tracing.Producer, jobs: list[NewJob]) -> None:
    """The enqueue span named after its jobs, linked to the contexts they carried themselves."""
    for job in jobs:
        producer.link_own(_meta_decoder.decode(job.fields["meta"]))
    producer.jobs([(job.id, job.fields["type"], job.queue) for job in jobs])


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
        if not tracing.enabled():
            return await _enqueue(request, None)
        with tracing.producer_span(exporting_only=True) as producer:
            return await _enqueue(request, producer)

    async def _enqueue(request: Request, producer: tracing.Producer | None) -> Response:
        now = timefmt.now_ms()
        job = job_from_body(
            request.body, now_ms=now, request_id=_client_request_id(request),
            trace_context=producer.carrier() if producer else _trace_context(request), tenant=request_tenant(request),
        )
        if producer is not None:
            _describe(producer, [job])
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
        if not tracing.enabled():
            return await _enqueue_batch(request, None)
        with tracing.producer_span(exporting_only=True) as producer:
            return await _enqueue_batch(request, producer)

    async def _enqueue_batch(request: Request, producer: tracing.Producer | None) -> Response:
        batch: BatchRequest = request.decode(_batch_decoder)
        if not batch.jobs:
            raise InvalidRequest("jobs must contain at least one job")
        if len(batch.jobs) > settings.max_batch_size:
            raise InvalidRequest(f"A batch holds at most {settings.max_batch_size} jobs.")
        now = timefmt.now_ms()
        jobs = []
        trace_context = producer.carrier() if producer else _trace_context(request)
        tenant = request_tenant(request)
        for index, raw in enumerate(batch.jobs):
            try:
                jobs.append(job_from_body(bytes(raw), now_ms=now, request_id=_client_request_id(request),
                                          trace_context=trace_context, tenant=tenant))
            except OJSError as err:
                err.message = f"jobs[{index}]: {err.message}"
                raise
        if producer is not None:
            _describe(producer, jobs)
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

    async def record_progress(
        request: Request, job_id: str, *, value: float | None, message: str | None, data: Raw, checkpoint: Raw,
    ) -> Response:
        await guard_job(request, broker, job_id)
        if value is None and message is None and not present(data) and not present(checkpoint):
            raise InvalidRequest("Send at least one of progress, message, data, checkpoint.")
        if present(checkpoint):
            try:  # the decoder the pool uses at the claim: what is stored here, it can read
                decode_checkpoint(bytes(checkpoint))
            except msgspec.MsgspecError as err:
                raise InvalidRequest(f"Invalid request: checkpoint: {err}") from None
        state = await broker.progress(
            job_id, value=value, message=message,
            data=bytes(data) if present(data) else None,
            checkpoint=bytes(checkpoint) if present(checkpoint) else None,
        )
        return json_response(200, _progress_body(job_id, state))

    async def put_progress(request: Request) -> Response:
        req: ProgressRequest = request.decode(_progress_decoder)
        value = req.progress / 100 if req.progress is not None and req.progress > 1 and req.percent else req.progress
        return await record_progress(
            request, request.params["job_id"], value=value, message=req.message, data=req.data, checkpoint=req.checkpoint,
        )

    async def post_worker_progress(request: Request) -> Response:
        """The SDKs' progress call: the job in the body, a percentage from 0 to 100."""
        req: WorkerProgressRequest = request.decode(_worker_progress_decoder)
        if req.percentage is not None and req.progress is not None:
            raise InvalidRequest("Send either percentage (0-100) or progress, not both.")
        if req.percentage is not None:
            value: float | None = req.percentage / 100
        elif req.progress is not None and req.progress > 1 and req.percent:
            value = req.progress / 100
        else:
            value = req.progress
        return await record_progress(request, req.job_id, value=value, message=req.message, data=req.data,
                                     checkpoint=req.checkpoint)

    async def get_progress(request: Request) -> Response:
        await guard_job(request, broker, request.params["job_id"])
        state = await broker.read_progress(request.params["job_id"])
        return json_response(200, _progress_body(request.params["job_id"], state))

    router.add("POST", "/ojs/v1/jobs", enqueue)
    router.add("PUT", "/ojs/v1/jobs/{job_id}/progress", put_progress)
    router.add("GET", "/ojs/v1/jobs/{job_id}/progress", get_progress)
    router.add("POST", "/ojs/v1/workers/progress", post_worker_progress)
    router.add("POST", "/ojs/v1/jobs/batch", enqueue_batch)
    router.add("GET", "/ojs/v1/jobs/{job_id}", info)
    router.add("DELETE", "/ojs/v1/jobs/{job_id}", cancel)
    router.add("POST", "/ojs/v1/jobs/{job_id}/cancel", cancel)
