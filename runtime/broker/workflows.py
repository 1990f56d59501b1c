"""Workflows: chain, group, batch (group + callbacks) and the DAG form (steps with depends_on).

All forms become one graph of member jobs, created in one enqueue.lua call: members without
dependencies are enqueued at once, the others are stored as `waiting` and enqueued by advance.lua
when their dependencies resolve. Every transition that ends a member queues it on the workflow
outbox in the same script, and advance.lua applies it; the broker runs advance.lua right after
such a transition and from the scheduler loop, so a crash can delay a workflow by one scheduler
tick but never leave it stuck.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from runtime import timefmt, tracing
from runtime.broker.core import Broker
from runtime.broker.records import NewJob, job_from_body
from runtime.errors import InvalidRequest, NotFound, OJSError
from runtime.ids import uuid7

MAX_MEMBERS = 1_000
CALLBACKS = ("on_complete", "on_success", "on_failure")
_CONDITION = {"on_complete": "always", "on_success": "success", "on_failure": "failure"}

StepList = Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_MEMBERS)]


class WorkflowRequest(msgspec.Struct, kw_only=True):
    type: Literal["chain", "group", "batch"] | None = None
    name: Annotated[str, Meta(max_length=255)] | None = None
    steps: StepList | None = None
    jobs: StepList | None = None
    callbacks: dict[str, dict[str, Any]] | None = None
    options: dict[str, Any] | None = None


class Member(msgspec.Struct, kw_only=True):
    label: str
    job: NewJob
    deps: list[int]
    condition: str | None = None  # callbacks: always | success | failure


def _step_job(step: dict[str, Any], defaults: dict[str, Any] | None, now_ms: int, where: str) -> NewJob:
    if "steps" in step or "jobs" in step:
        raise InvalidRequest(f"{where}: nested workflows are not supported; flatten them into depends_on")
    body = {k: v for k, v in step.items() if k not in ("id", "depends_on", "name")}
    if defaults:
        body["options"] = {**defaults, **(body.get("options") or {})}
    try:
        return job_from_body(msgspec.json.encode(body), now_ms=now_ms)
    except OJSError as err:
        err.message = f"{where}: {err.message}"
        raise


def _member_bodies(req: WorkflowRequest) -> list[dict[str, Any]]:
    """Every job body of a workflow request: steps, jobs and callbacks."""
    bodies = [*(req.steps or []), *(req.jobs or [])]
    bodies.extend(body for body in (req.callbacks or {}).values() if isinstance(body, dict))
    return [body for body in bodies if isinstance(body, dict)]


def _dag_deps(steps: list[dict[str, Any]]) -> list[list[int]]:
    """depends_on ids into member indexes; unknown ids and cycles are rejected."""
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        sid = step.get("id")
        if not isinstance(sid, str) or not sid or sid in index:
            raise InvalidRequest(f"steps[{i}].id must be a unique non-empty string")
        index[sid] = i
    deps: list[list[int]] = []
    for i, step in enumerate(steps):
        wanted = step.get("depends_on") or []
        if not isinstance(wanted, list) or not all(isinstance(d, str) for d in wanted):
            raise InvalidRequest(f"steps[{i}].depends_on must be a list of step ids")
        missing = [d for d in wanted if d not in index]
        if missing:
            raise InvalidRequest(f"steps[{i}].depends_on: unknown step ids {missing}")
        deps.append(sorted({index[d] for d in wanted}))
    _check_acyclic(deps)
    return deps


def _check_acyclic(deps: list[list[int]]) -> None:
    remaining = {i: set(d) for i, d in enumerate(deps)}
    while remaining:
        ready = [i for i, d in remaining.items() if not d]
        if not ready:
            raise InvalidRequest("workflow steps form a cycle")
        for i in ready:
            del remaining[i]
        for d in remaining.values():
            d.difference_update(ready)


def plan(req: WorkflowRequest, now_ms: int) -> tuple[str, list[Member], int]:
    """(kind, members, number of plain members) for a request in any accepted form."""
    opts = req.options
    if req.type == "chain":
        steps = req.steps or req.jobs
        if not steps:
            raise InvalidRequest("a chain needs at least one step in steps")
        members = [Member(label=str(i), job=_step_job(s, opts, now_ms, f"steps[{i}]"), deps=[i - 1] if i else [])
                   for i, s in enumerate(steps)]
        return "chain", members, len(members)
    if req.type is None:
        if not req.steps:
            raise InvalidRequest("a workflow needs type chain|group|batch, or steps with id and depends_on")
        deps = _dag_deps(req.steps)
        members = [Member(label=str(s["id"]), job=_step_job(s, opts, now_ms, f"steps[{i}]"), deps=deps[i])
                   for i, s in enumerate(req.steps)]
        return "dag", members, len(members)
    jobs = req.jobs or req.steps
    if not jobs:
        raise InvalidRequest(f"a {req.type} needs at least one job in jobs")
    members = [Member(label=str(i), job=_step_job(j, opts, now_ms, f"jobs[{i}]"), deps=[]) for i, j in enumerate(jobs)]
    callbacks = req.callbacks or {}
    unknown = set(callbacks) - set(CALLBACKS)
    if unknown:
        raise InvalidRequest(f"unknown callbacks: {sorted(unknown)}")
    if req.type == "batch" and not callbacks:
        raise InvalidRequest("a batch needs at least one of callbacks.on_complete, on_success, on_failure")
    for name in CALLBACKS:
        if name in callbacks:
            job = _step_job(callbacks[name], None, now_ms, f"callbacks.{name}")
            members.append(Member(label=name, job=job, deps=list(range(len(jobs))), condition=_CONDITION[name]))
    if len(members) > MAX_MEMBERS:
        raise InvalidRequest(f"a workflow holds at most {MAX_MEMBERS} jobs")
    return req.type, members, len(jobs)


def _wire(workflow_id: str, members: list[Member]) -> dict[str, str]:
    """Stamp the members with their workflow fields; return the dependents lists."""
    dependents: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        for d in m.deps:
            dependents.setdefault(d, []).append(i)
        fields = m.job.fields
        fields["workflow_id"] = workflow_id
        fields["wf_index"] = str(i)
        if m.deps:
            fields["wf_deps"] = ",".join(map(str, m.deps))
        if m.condition:
            fields["wf_cond"] = m.condition
        if m.deps and m.job.state in ("available", "scheduled"):
            m.job.state = "waiting"
            fields["state"] = "waiting"
            fields["wf_pending"] = str(len(m.deps))
            fields.pop("enqueued_at", None)
            m.job.due_ms = None
    return {f"d{i}": ",".join(map(str, ds)) for i, ds in dependents.items()}


class Workflows:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.keys = broker.keys

    async def create(self, req: WorkflowRequest) -> dict[str, Any]:
        # One PRODUCER span for the workflow's jobs: each carries it as its traceparent and as
        # `ojs.workflow.trace_origin` (a job's own traceparent is kept), and each step enqueued
        # later links to the spans of the steps it waited for (advance.lua's `step_traces`).
        with tracing.producer_span("ojs.workflow.create") as producer:
            if producer is not None:
                for body in _member_bodies(req):
                    meta = body.setdefault("meta", {})
                    if isinstance(meta, dict):  # else plan() rejects it
                        producer.inject(meta, workflow=True)
            view = await self._create(req)
            if producer is not None:
                producer.workflow(view["id"], view["type"], len(view["steps"]))
            return view

    async def _create(self, req: WorkflowRequest) -> dict[str, Any]:
        now = timefmt.now_ms()
        kind, members, total = plan(req, now)
        workflow_id = uuid7()
        record: dict[str, str] = {
            "id": workflow_id, "type": kind, "name": req.name or kind, "state": "running",
            "total": str(total), "completed": "0", "failed": "0", "created_at": str(now),
            "members": str(len(members)),
        }
        record.update(_wire(workflow_id, members))
        for i, m in enumerate(members):
            record[f"j{i}"] = m.job.id
            record[f"s{i}"] = m.label
        await self.broker.enqueue([m.job for m in members], now_ms=now, workflow=record)
        return await self.get(workflow_id)

    async def get(self, workflow_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(self.keys.workflow(workflow_id))
        if not raw:
            raise NotFound(f"Workflow '{workflow_id}' not found.")
        w = {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"r")}
        count = int(w["members"])
        ids = [w[f"j{i}"] for i in range(count)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), ["state", "type", "wf_deps", "wf_cond"])
            rows = await pipe.execute()
        return _view(w, ids, rows)

    async def list(
        self, *, state: str | None, limit: int, after: tuple[float, str] | None, scan: int = 2_000,
    ) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
        """Newest first from the `workflows` index, optionally one state only; at most `scan`
        index entries are read per call (a state filter is checked on each), so a page may be
        short. The second value, when not None, is where the next page starts: (creation time,
        id) of the last entry read. Cost: one ZRANGE and one pipelined HMGET per call."""
        want = scan if state else limit
        top = "+inf" if after is None else after[0]
        entries = await self.redis.zrange(self.keys.workflows, top, "-inf", desc=True, byscore=True,
                                          withscores=True, offset=0, num=want + (64 if after else 0))
        if after is not None:  # drop what the last page showed (ties in the same ms included)
            entries = [(m, sc) for m, sc in entries if sc < after[0] or m.decode() < after[1]]
        entries = entries[:want]
        fields = ["id", "type", "name", "state", "total", "completed", "failed", "created_at", "completed_at",
                  "cancelled_at"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for workflow_id, _ in entries:
                pipe.hmget(self.keys.workflow(workflow_id.decode()), fields)
            rows = await pipe.execute()
        items: list[dict[str, Any]] = []
        cursor: tuple[float, str] | None = None
        for (member, score), row in zip(entries, rows, strict=True):
            cursor = (score, member.decode())
            record = dict(zip(fields, (v.decode() if v is not None else None for v in row), strict=True))
            if record["id"] is None or (state and record["state"] != state):
                continue
            items.append(_summary(record))
            if len(items) >= limit:
                break
        full = len(entries) == want
        return items, cursor if (full or len(items) >= limit) else None

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        members = await self.redis.hgetall(self.keys.workflow(workflow_id))
        if not members:
            raise NotFound(f"Workflow '{workflow_id}' not found.")
        ids = [members[f"j{i}".encode()].decode() for i in range(int(members[b"members"]))]
        await self.broker.cancel_many(ids, workflow_id=workflow_id)
        return await self.get(workflow_id)


def _summary(w: dict[str, str | None]) -> dict[str, Any]:
    total, done, failed = int(w["total"] or 0), int(w["completed"] or 0), int(w["failed"] or 0)
    out: dict[str, Any] = {
        "id": w["id"], "type": w["type"], "name": w["name"], "state": w["state"],
        "total": total, "completed": done, "failed": failed,
        "created_at": timefmt.format_ms(int(w["created_at"] or 0)),
    }
    for name in ("completed_at", "cancelled_at"):
        if w.get(name):
            out[name] = timefmt.format_ms(int(w[name] or 0))
    return out


def _view(w: dict[str, str], ids: list[str], rows: list[list[bytes | None]]) -> dict[str, Any]:
    labels = [w[f"s{i}"] for i in range(len(ids))]
    steps: list[dict[str, Any]] = []
    callbacks: dict[str, dict[str, Any]] = {}
    for i, (job_id, row) in enumerate(zip(ids, rows, strict=False)):
        state = (row[0] or b"").decode() or "unknown"
        deps = [labels[int(d)] for d in (row[2] or b"").decode().split(",") if d]
        entry = {
            "index": i, "id": labels[i], "type": (row[1] or b"").decode(),
            "state": "pending" if state == "waiting" else state,
            "job_id": None if state == "waiting" else job_id, "depends_on": deps,
        }
        if row[3]:
            callbacks[labels[i]] = entry
        else:
            steps.append(entry)
    total, done, failed = int(w["total"]), int(w["completed"]), int(w["failed"])
    view: dict[str, Any] = {
        "id": w["id"], "type": w["type"], "name": w["name"], "state": w["state"],
        "total": total, "completed": done, "failed": failed,
        "steps_total": total, "steps_completed": done,
        "jobs_total": total, "jobs_completed": done, "jobs_failed": failed,
        "steps": steps, "created_at": timefmt.format_ms(int(w["created_at"])),
    }
    if callbacks:
        view["callbacks"] = callbacks
    for name in ("completed_at", "cancelled_at"):
        if name in w:
            view[name] = timefmt.format_ms(int(w[name]))
    return view
