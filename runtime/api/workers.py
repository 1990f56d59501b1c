"""Worker protocol endpoints: fetch, ack, nack (also as /ojs/v1/jobs/{id}/ack|nack, the form of
the results and serverless extensions), heartbeat, and the graceful-shutdown beat."""

from __future__ import annotations

import msgspec

from runtime import metrics, timefmt
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenant_scope import guard_job, request_tenant
from runtime.broker.job_versions import VersionRange, parse_range
from runtime.broker.records import present
from runtime.broker.render import encode_job
from runtime.envelope import (
    AckRequest,
    ErrorInfo,
    FetchRequest,
    HeartbeatRequest,
    JobAckRequest,
    JobNackRequest,
    NackRequest,
    error_info,
)
from runtime.errors import InvalidRequest

_fetch_decoder = msgspec.json.Decoder(FetchRequest)
_ack_decoder = msgspec.json.Decoder(AckRequest)
_nack_decoder = msgspec.json.Decoder(NackRequest)
_heartbeat_decoder = msgspec.json.Decoder(HeartbeatRequest)
_job_ack_decoder = msgspec.json.Decoder(JobAckRequest)
_job_nack_decoder = msgspec.json.Decoder(JobNackRequest)
_encode = msgspec.json.encode

DRAINING_STATES = frozenset({"drain", "draining", "terminate", "shutting_down", "quiet"})


def _result_bytes(raw: msgspec.Raw) -> bytes | None:
    return bytes(raw).strip() if present(raw) else None


def _version_ranges(req: FetchRequest) -> dict[str, VersionRange] | None:
    """The worker's version declarations (job-versioning extension); 400 for a malformed range."""
    declared = dict(req.versions or {})
    declared.update((h.type, h.versions) for h in req.handlers or ())
    ranges = {}
    for job_type, text in declared.items():
        try:
            parsed = parse_range(text)
        except ValueError as err:
            raise InvalidRequest(f"versions of {job_type}: {err}") from None
        if parsed is not None:
            ranges[job_type] = parsed
    return ranges or None


def _path_job(request: Request, given: str | None) -> str:
    """The job of /ojs/v1/jobs/{id}/ack|nack; a body may name it too, but not another one."""
    job_id = request.params["job_id"]
    if given is not None and given != job_id:
        raise InvalidRequest(f"job_id '{given}' in the body is not the job of the path ('{job_id}').")
    return job_id


def register(router: Router, services: Services) -> None:
    broker = services.broker
    settings = services.settings

    async def fetch(request: Request) -> Response:
        req: FetchRequest = request.decode(_fetch_decoder)
        if req.count > settings.max_fetch_count:
            raise InvalidRequest(f"count must be at most {settings.max_fetch_count}")
        jobs = await broker.fetch(
            req.queues, count=req.count, worker_id=req.worker_id, visibility_ms=req.visibility_timeout_ms,
            version_ranges=_version_ranges(req),
            tenant=request_tenant(request),
        )
        for fields in jobs:
            metrics.job_started(fields.get(b"queue", b"").decode(), fields.get(b"type", b"").decode(), fields)
        encoded = [encode_job(h) for h in jobs]
        body = b'{"jobs":[' + b",".join(encoded) + b"]"
        if encoded:
            body += b',"job":' + encoded[0]
        return json_response(200, body + b"}")

    async def settle_ack(
        request: Request, job_id: str, result: msgspec.Raw, worker_id: str | None, attempt: int | None,
    ) -> Response:
        await guard_job(request, broker, job_id)  # a tenant settles only its own jobs
        done = await broker.ack(job_id, _result_bytes(result), worker_id=worker_id, attempt=attempt)
        metrics.job_outcome(done.queue, done.type, "completed")
        completed_at = timefmt.format_ms(done.completed_at_ms)
        # The job as ack.lua leaves it, from what it answered: no read after the write.
        job = b'{"id":' + _encode(job_id) + b',"type":' + _encode(done.type) + b',"queue":' + _encode(done.queue)
        job += b',"state":"completed","completed_at":' + _encode(completed_at)
        if present(result):
            job += b',"result":' + bytes(result).strip()
        head = _encode({"acknowledged": True, "id": job_id, "job_id": job_id, "state": "completed",
                        "completed_at": completed_at})
        return json_response(200, head[:-1] + b',"job":' + job + b"}}")

    async def settle_nack(
        request: Request, job_id: str, error: ErrorInfo | None, *, requeue: bool, worker_id: str | None,
        attempt: int | None,
    ) -> Response:
        await guard_job(request, broker, job_id)
        out = await broker.nack(job_id, error, requeue=requeue, worker_id=worker_id, attempt=attempt)
        metrics.job_outcome(out.queue, out.type, out.outcome)
        body: dict[str, object] = {
            "id": out.job_id, "job_id": out.job_id, "state": out.state, "attempt": out.attempt,
            "max_attempts": out.max_attempts,
        }
        if out.state == "retryable" and out.next_attempt_ms is not None:
            body["retry_delay_ms"] = out.retry_delay_ms
            body["next_attempt_at"] = body["next_retry_at"] = timefmt.format_ms(out.next_attempt_ms)
        elif out.state == "discarded":
            body["discarded_at"] = body["completed_at"] = timefmt.format_ms(out.now_ms)
        # The job as nack.lua leaves it, from what the nack read and answered.
        body["job"] = {"type": out.type, "queue": out.queue,
                       **{k: v for k, v in body.items() if k not in ("job_id", "retry_delay_ms", "next_retry_at")}}
        return json_response(200, body)

    async def ack(request: Request) -> Response:
        req: AckRequest = request.decode(_ack_decoder)
        return await settle_ack(request, req.job_id, req.result, req.worker_id, req.attempt)

    async def nack(request: Request) -> Response:
        req: NackRequest = request.decode(_nack_decoder)
        return await settle_nack(request, req.job_id, error_info(req.error), requeue=req.requeue, worker_id=req.worker_id,
                                 attempt=req.attempt)

    async def job_ack(request: Request) -> Response:
        req: JobAckRequest = request.decode(_job_ack_decoder, allow_empty=True)
        job_id = _path_job(request, req.job_id)
        return await settle_ack(request, job_id, req.result, req.worker_id, req.attempt)

    async def job_nack(request: Request) -> Response:
        req: JobNackRequest = request.decode(_job_nack_decoder, allow_empty=True)
        job_id = _path_job(request, req.job_id)
        return await settle_nack(request, job_id, error_info(req.error), requeue=req.requeue, worker_id=req.worker_id,
                                 attempt=req.attempt)

    async def heartbeat(request: Request) -> Response:
        req: HeartbeatRequest = request.decode(_heartbeat_decoder)
        ids = list(req.active_jobs) if isinstance(req.active_jobs, list) else list(req.active_job_ids or [])
        if req.job_id and req.job_id not in ids:
            ids.append(req.job_id)
        count = req.active_jobs if isinstance(req.active_jobs, int) else None
        state = "drain" if req.shutdown else req.state
        beat = await broker.heartbeat(
            req.worker_id, ids, state=state, visibility_ms=req.visibility_timeout_ms, active_count=count,
            interval_ms=req.heartbeat_interval_ms,
        )
        return json_response(200, {
            "state": beat.directive,
            "directive": "" if beat.directive == "running" else beat.directive,
            "jobs_extended": beat.extended,
            "jobs_cancelled": beat.cancelled,
            "server_time": timefmt.format_ms(timefmt.now_ms()),
        })

    async def beat(request: Request) -> Response:
        req: HeartbeatRequest = request.decode(_heartbeat_decoder)
        state = "drain" if req.shutdown else (req.state or "running")
        count = req.active_jobs if isinstance(req.active_jobs, int) else None
        if isinstance(req.active_jobs, list):
            count = len(req.active_jobs)
        now = await services.admin.record_worker_state(req.worker_id, state, count)
        return json_response(200, {"acknowledged": True, "state": state, "server_time": timefmt.format_ms(now)})

    async def worker_health(request: Request) -> Response:
        info = await services.admin.worker(request.params["worker_id"])
        reported = info.get("state", "running")
        state = "draining" if reported in DRAINING_STATES - {"quiet"} else reported
        last = info.get("last_heartbeat_at")
        return json_response(200, {
            "worker_id": request.params["worker_id"], "state": state,
            "last_heartbeat_at": timefmt.format_ms(int(last)) if last else None,
            "active_jobs": int(info.get("active_jobs", "0") or 0),
        })

    router.add("POST", "/ojs/v1/workers/fetch", fetch)
    router.add("POST", "/ojs/v1/workers/ack", ack)
    router.add("POST", "/ojs/v1/workers/nack", nack)
    router.add("POST", "/ojs/v1/jobs/{job_id}/ack", job_ack)
    router.add("POST", "/ojs/v1/jobs/{job_id}/nack", job_nack)
    router.add("POST", "/ojs/v1/workers/heartbeat", heartbeat)
    router.add("POST", "/ojs/v1/workers/beat", beat)
    router.add("GET", "/ojs/v1/workers/{worker_id}/health", worker_health)
