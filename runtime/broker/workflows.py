"""Workflows: chain, group, batch (group + callbacks) and the DAG form (steps with depends_on).

All forms become one graph of member jobs, created in one enqueue.lua call: members without
dependencies are enqueued at once, the others are stored as `waiting` and enqueued by advance.lua
when their dependencies resolve. Nested chains, groups and batches are flattened into that graph
by runtime.broker.workflow_plan. Every transition that ends a member queues it on the workflow
outbox in the same script, and advance.lua applies it; the broker runs advance.lua right after
such a transition and from the scheduler loop, so a crash can delay a workflow by one scheduler
tick but never leave it stuck.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from runtime import timefmt, tracing
from runtime.broker.core import Broker
from runtime.broker.workflow_plan import MAX_NESTING_DEPTH, Member, WorkflowRequest, build, plan
from runtime.errors import InvalidRequest, NotFound
from runtime.ids import uuid7

__all__ = ["MAX_NESTING_DEPTH", "WorkflowRequest", "Workflows", "plan"]


def _member_bodies(req: WorkflowRequest) -> list[dict[str, Any]]:
    """Every job body of a workflow request, in nested parts too: steps, jobs and callbacks (a
    part with steps, jobs or callbacks of its own is a nested workflow, as workflow_plan reads it)."""
    bodies: list[dict[str, Any]] = []

    def walk(steps: Any, jobs: Any, callbacks: Any) -> None:
        parts = [*(steps if isinstance(steps, list) else []), *(jobs if isinstance(jobs, list) else [])]
        parts += list(callbacks.values()) if isinstance(callbacks, dict) else []
        for part in parts:
            if not isinstance(part, dict):
                continue
            if "steps" in part or "jobs" in part or "callbacks" in part:
                walk(part.get("steps"), part.get("jobs"), part.get("callbacks"))
            else:
                bodies.append(part)

    walk(req.steps, req.jobs, req.callbacks)
    return bodies


def _wire(workflow_id: str, members: list[Member]) -> dict[str, str]:
    """Stamp the members with their workflow fields; return the dependents lists."""
    dependents: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        if m.job.state == "pending":
            # A pending job waits for an activation that a workflow never sends: the member
            # would hold its workflow running for ever.
            raise InvalidRequest(f"Workflow member {i} ({m.job.fields.get('type')}) is pending (options.pending): "
                                 "a workflow's members run when their dependencies allow, so none may be pending.")
        for d in m.deps:
            dependents.setdefault(d, []).append(i)
        fields = m.job.fields
        fields["workflow_id"] = workflow_id
        fields["wf_index"] = str(i)
        if m.deps:
            fields["wf_deps"] = ",".join(map(str, m.deps))
        if m.condition:
            fields["wf_cond"] = m.condition
        if m.awaited_callback:
            fields["wf_awaited"] = "1"
        if m.context:
            fields["wf_ctx"] = m.context
        if m.deps and m.job.state in ("available", "scheduled"):
            m.job.state = "waiting"
            fields["state"] = "waiting"
            fields["wf_pending"] = str(len(m.deps))
            fields.pop("enqueued_at", None)
            m.job.due_ms = None
    return {f"d{i}": ",".join(map(str, ds)) for i, ds in dependents.items()}


_sequence_json = msgspec.json.Encoder()

_IndexEntries = list[tuple[bytes, float]]  # (workflow id, creation ms) from the `workflows` index


class Workflows:
    def __init__(self, broker: Broker, *, new_id: Callable[[], str] = uuid7) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.keys = broker.keys
        # The ids of new workflows and of their members: in a sharded namespace, ids of the
        # broker's shard (runtime.broker.shards.id_in), so that the workflow's id names it.
        self._new_id = new_id

    async def create(self, req: WorkflowRequest, *, tenant: str | None = None) -> dict[str, Any]:
        """With `tenant` (the request's X-OJS-Tenant), every member is that tenant's job; a member
        whose meta names another tenant is a 400."""
        if tenant is not None:
            for body in _member_bodies(req):
                meta = body.setdefault("meta", {})
                if isinstance(meta, dict):  # else plan() rejects it
                    if meta.get("tenant_id", tenant) != tenant:
                        raise InvalidRequest("A member's meta.tenant_id is not the X-OJS-Tenant header's tenant.")
                    meta["tenant_id"] = tenant
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

    async def first_member(self, workflow_id: str) -> str | None:
        """The id of a workflow's first member (whose tenant is the workflow's), or None."""
        raw = await self.redis.hget(self.keys.workflow(workflow_id), "j0")
        return raw.decode() if raw is not None else None

    async def _create(self, req: WorkflowRequest) -> dict[str, Any]:
        now = timefmt.now_ms()
        graph = build(req, now)
        kind, members = graph.kind, graph.members
        workflow_id = self._new_id()
        if self._new_id is not uuid7:
            for m in members:
                if not m.job.client_id:
                    m.job.id = self._new_id()
                    if "id" in m.job.fields:
                        m.job.fields["id"] = m.job.id
        # `open`: the members the workflow waits for (plain ones and a nested batch's callbacks);
        # it ends when none is left. q<k>: the result sequences members' contexts refer to.
        awaited = graph.total + sum(1 for m in members if m.awaited_callback)
        record: dict[str, str] = {
            "id": workflow_id, "type": kind, "name": req.name or kind, "state": "running",
            "total": str(graph.total), "completed": "0", "failed": "0", "created_at": str(now),
            "members": str(len(members)), "open": str(awaited),
        }
        record.update({f"q{k}": _sequence_json.encode(seq).decode() for k, seq in enumerate(graph.sequences)})
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
        id) of the last entry read. Cost: one ZRANGE and one pipelined HMGET per call (past a
        millisecond that holds more workflows than a page, two more round trips: see _index_after)."""
        want = scan if state else limit
        entries = await self._index_after(after, want)
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

    async def _index_after(self, after: tuple[float, str] | None, want: int) -> _IndexEntries:
        """Up to `want` entries of the `workflows` index past the cursor, newest first. The
        index orders the workflows of one millisecond by id: those of the cursor's millisecond
        that earlier pages showed are skipped, however many there are, so a walk never ends
        early. Past a first read of only those, the page starts at the cursor's own entry's rank
        (one lookup, not a re-read of the millisecond); when that entry is gone (deleted), the
        read goes on a chunk at a time."""
        if after is None:
            entries: _IndexEntries = await self.redis.zrange(
                self.keys.workflows, "+inf", "-inf", desc=True, byscore=True, withscores=True, offset=0, num=want)
            return entries
        score, last_id = after
        chunk = want + 64
        kept: _IndexEntries = []
        offset = 0
        while len(kept) < want:
            read = await self.redis.zrange(self.keys.workflows, score, "-inf", desc=True, byscore=True,
                                           withscores=True, offset=offset, num=chunk)
            kept += [(m, sc) for m, sc in read if sc < score or m.decode() < last_id]
            if len(read) < chunk:
                break
            if not kept and offset == 0:  # a crowded millisecond: start right past the cursor's entry
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrevrank(self.keys.workflows, last_id)
                    pipe.zscore(self.keys.workflows, last_id)
                    rank, at = await pipe.execute()
                if rank is not None and at == score:
                    by_rank: _IndexEntries = await self.redis.zrange(
                        self.keys.workflows, rank + 1, rank + want, desc=True, withscores=True)
                    return by_rank
            offset += len(read)
        return kept[:want]

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
