"""Worker protocol endpoints: fetch, ack, nack, heartbeat, and the graceful-shutdown beat."""

from __future__ import annotations

import msgspec

from runtime import metrics, timefmt
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.api.tenancy import request_tenant
from runtime.broker.records import present
from runtime.broker.render import encode_job
from runtime.envelope import AckRequest, FetchRequest, HeartbeatRequest, NackRequest
from runtime.errors import InvalidRequest

_fetch_decoder = msgspec.json.Decoder(FetchRequest)
_ack_decoder = msgspec.json.Decoder(AckRequest)
_nack_decoder = msgspec.json.Decoder(NackRequest)
_heartbeat_decoder = msgspec.json.Decoder(HeartbeatRequest)

DRAINING_STATES = frozenset({"drain", "draining", "terminate", "shutting_down", "quiet"})


def _result_bytes(raw: msgspec.Raw) -> bytes | None:
    return bytes(raw).strip() if present(raw) else None


def register(router: Router, services: Services) -> None:
    broker = services.broker
    settings = services.settings

    async def fetch(request: Request) -> Response:
        req: FetchRequest = request.decode(_fetch_decoder)
        if req.count > settings.max_fetch_count:
            raise InvalidRequest(f"count must be at most {settings.max_fetch_count}")
        jobs = await broker.fetch(
            req.queues, count=req.count, worker_id=req.worker_id, visibility_ms=req.visibility_timeout_ms,
            tenant=request_tenant(request),
        )
        for fields in jobs:
            metrics.job_started(fields.get(b"queue", b"").decode(), fields.get(b"type", b"").decode(), fields)
        encoded = [encode_job(h) for h in jobs]
        body = b'{"jobs":[' + b",".join(encoded) + b"]"
        if encoded:
            body += b',"job":' + encoded[0]
        return json_response(200, body + b"}")

    async def ack(request: Request) -> Response:
        req: AckRequest = request.decode(_ack_decoder)
        done = await broker.ack(req.job_id, _result_bytes(req.result), worker_id=req.worker_id, attempt=req.attempt)
        metrics.job_outcome(done.queue, done.type, "completed")
        return json_response(200, {
            "acknowledged": True, "id": req.job_id, "job_id": req.job_id, "state": "completed",
            "completed_at": timefmt.format_ms(done.completed_at_ms),
        })

    async def nack(request: Request) -> Response:
        req: NackRequest = request.decode(_nack_decoder)
        out = await broker.nack(
            req.job_id, req.error, requeue=req.requeue, worker_id=req.worker_id, attempt=req.attempt,
        )
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
        return json_response(200, body)

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
    router.add("POST", "/ojs/v1/workers/heartbeat", heartbeat)
    router.add("POST", "/ojs/v1/workers/beat", beat)
    router.add("GET", "/ojs/v1/workers/{worker_id}/health", worker_health)
