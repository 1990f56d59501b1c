"""Fake and inline mode: the jobs live in this process' memory, no Redis is involved.

An enqueue goes through the real :class:`runtime.client.Client` (its defaults, its enqueue
middleware, and :func:`runtime.broker.records.job_from_body`, the validation the HTTP binding
and the broker use), and only the final insert lands here instead of enqueue.lua. What the
store does with a job mirrors the scripts: the same hash fields, rendered by the same
:func:`runtime.broker.render.render_job`; a unique policy's lock; cancel refused for a job that
has ended; and after a failed execution the same verdicts and backoff as nack.lua (jitter
excepted: the fake backoff is the policy's nominal delay).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import Enqueued, EnqueuedJobs
from runtime.broker.records import RETRY_FIELD_DEFAULTS, NewJob, retry_display
from runtime.broker.render import DEFAULT_MAX_ATTEMPTS, as_hash, encode_job
from runtime.broker.workflows import WorkflowRequest, plan
from runtime.claimed_job import job_of_hash
from runtime.client import Client
from runtime.config import Settings
from runtime.context import ProgressThrottle, ProgressUpdate
from runtime.envelope import ErrorInfo, decode_checkpoint
from runtime.errors import Conflict, Duplicate, NotFound
from runtime.executor import Cancelled, Completed, Discarded, Outcome, RetryLater
from runtime.ids import uuid7
from runtime.testing.kit import DrainSummary, TestContext, execution_record, redirect, summary_of

FAKE_URL = "redis://fake.invalid:6379/0"  # never connected to: the store below answers instead
ENDED = frozenset({"completed", "cancelled", "discarded"})
WAITING = frozenset({"scheduled", "retryable"})
EXPIRABLE = frozenset({"available", "scheduled", "retryable", "pending"})
_envelope = msgspec.json.Decoder(dict[str, Any])
_json = msgspec.json.Decoder()


class JobFailed(Exception):
    """Inline mode: a job's last attempt failed (its retries, if any, are spent)."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(f"job {job['id']} ({job['type']}) failed: {error.get('type')}: {error.get('message')}")
        self.job = job


class MemoryStore:
    """Job hashes by id, in enqueue order, and the state changes the scripts would make."""

    def __init__(self, on_enqueued: Callable[[list[str]], Any]) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.events: list[dict[str, Any]] = []  # what the scripts would XADD to the events stream
        self._on_enqueued = on_enqueued

    # --- the broker surface Client uses ---------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob], *, now_ms: int, workflow: dict[str, str] | None = None) -> EnqueuedJobs:
        """enqueue.lua in memory: all or nothing; a unique lock is taken one job after the
        other, so a job meets an earlier twin of the same call as its holder (reject: 409;
        ignore: the earlier one's id; replace: the later one is created instead)."""
        holders: dict[int, str] = {}  # job index -> the stored job holding its lock
        twin_of: dict[int, int] = {}  # ignore: the earlier job of this call it defers to
        replaced_by: dict[int, int] = {}  # replace: the later job of this call that replaces it
        kept_schedule: dict[int, tuple[bytes, bytes]] = {}  # replace_except_schedule: (due, scheduled_at)
        by_lock: dict[str, int] = {}  # fingerprint -> the job of this call that will hold it
        for j, job in enumerate(jobs):  # every check before the first insert
            if job.id in self.hashes or any(other.id == job.id for other in jobs[:j]):
                raise Duplicate(f"Job '{job.id}' already exists.", details={"job_id": job.id})
            lock = job.unique
            if lock is None:
                continue
            earlier = by_lock.get(lock.fingerprint)
            if earlier is not None:
                if lock.on_conflict == "reject" or workflow is not None:
                    raise _unique_conflict(jobs[earlier].id, jobs[earlier].state, lock.fingerprint)
                if lock.on_conflict == "ignore":
                    twin_of[j] = earlier
                    continue
                replaced_by[earlier] = j
                if earlier in holders:
                    holders[j] = holders[earlier]
                by_lock[lock.fingerprint] = j
                continue
            holder = self._unique_holder(job, now_ms)
            if holder is not None:
                state = self.hashes[holder][b"state"].decode()
                if lock.on_conflict == "reject" or (lock.on_conflict == "ignore" and workflow is not None):
                    raise _unique_conflict(holder, state, lock.fingerprint)
                holders[j] = holder
                if lock.on_conflict == "replace_except_schedule" and state == "scheduled" and job.state != "waiting":
                    stored = self.hashes[holder]
                    kept_schedule[j] = (stored[b"due_ms"], stored[b"scheduled_at"])
            by_lock[lock.fingerprint] = j
        out = EnqueuedJobs()
        created: list[str] = []
        for j, job in enumerate(jobs):
            if j in holders and job.unique is not None and job.unique.on_conflict == "ignore":
                out.append(Enqueued(holders[j], True))
            elif j in twin_of:
                out.append(Enqueued(jobs[twin_of[j]].id, True))
            elif j in replaced_by:
                last = replaced_by[j]
                while last in replaced_by:
                    last = replaced_by[last]
                out.append(Enqueued(jobs[last].id, True))
            else:
                if j in holders and self.hashes[holders[j]][b"state"] != b"cancelled":
                    self._cancel(holders[j])
                self._insert(job, workflow, kept_schedule.get(j))
                created.append(job.id)
                out.append(Enqueued(job.id, False))
        result = self._on_enqueued(created)
        if asyncio.iscoroutine(result):
            await result
        return out

    def _insert(self, job: NewJob, workflow: dict[str, str] | None, schedule: tuple[bytes, bytes] | None) -> None:
        fields = as_hash(job)
        if schedule is not None:  # the replacement fires when the holder would have
            fields[b"due_ms"], fields[b"scheduled_at"] = schedule
            fields[b"state"] = b"scheduled"
            fields.pop(b"enqueued_at", None)
        elif job.due_ms is not None:
            fields[b"due_ms"] = str(job.due_ms).encode()
        if workflow is not None:
            fields[b"workflow_id"] = workflow["id"].encode()
        self.hashes[job.id] = fields
        state = fields[b"state"].decode()
        self.emit("job.scheduled" if state == "scheduled" else "job.enqueued", job.id, state=state)

    async def get(self, job_id: str) -> dict[bytes, bytes]:
        if job_id not in self.hashes:
            raise NotFound(f"Job '{job_id}' not found.")
        return self.hashes[job_id]

    async def cancel(self, job_id: str) -> str:
        fields = await self.get(job_id)
        state = fields[b"state"].decode()
        if state in ENDED:
            raise Conflict(f"Cannot cancel job '{job_id}' in state '{state}'.", details={"state": state})
        self._cancel(job_id)
        return state

    def _cancel(self, job_id: str) -> None:
        fields = self.hashes[job_id]
        previous = fields[b"state"].decode()
        fields.update({b"state": b"cancelled", b"cancelled_at": str(timefmt.now_ms()).encode()})
        fields.pop(b"due_ms", None)
        self.emit("job.cancelled", job_id, state="cancelled", previous_state=previous)

    def emit(self, event_type: str, job_id: str, **data: Any) -> None:
        fields = self.hashes[job_id]
        self.events.append({"type": event_type, "subject": job_id, "time": timefmt.now_ms(), "data": {
            "job_id": job_id, "job_type": fields[b"type"].decode(), "queue": fields[b"queue"].decode(), **data}})

    async def close(self) -> None:
        pass

    def _unique_holder(self, job: NewJob, now_ms: int) -> str | None:
        """The stored job holding `job`'s unique lock, if any (in one of the lock's states, and
        within its period)."""
        lock = job.unique
        if lock is None:
            return None
        states = set(lock.states.split(","))
        for job_id, fields in self.hashes.items():
            if fields.get(b"unique_key") != lock.fingerprint.encode() or fields[b"state"].decode() not in states:
                continue
            if lock.period_ms is not None and int(fields[b"created_at"]) + lock.period_ms <= now_ms:
                continue
            return job_id
        return None

    # --- reading --------------------------------------------------------------------------------

    def envelope(self, job_id: str) -> dict[str, Any]:
        return _envelope.decode(encode_job(self.hashes[job_id]))

    def due(self, queue: str | None, *, with_scheduled: bool) -> str | None:
        """The next job a pool would take: available (or due) ones, highest priority first, FIFO."""
        now = timefmt.now_ms()
        self._expire(now)
        best: tuple[int, int] | None = None
        chosen = None
        for seq, (job_id, fields) in enumerate(self.hashes.items()):
            state = fields[b"state"].decode()
            if queue is not None and fields[b"queue"].decode() != queue:
                continue
            if state in WAITING:
                if not with_scheduled and int(fields.get(b"due_ms", b"0")) > now:
                    continue
            elif state != "available":
                continue
            rank = (-int(fields[b"priority"]), seq)
            if best is None or rank < best:
                best, chosen = rank, job_id
        return chosen

    def _expire(self, now: int) -> None:
        """lib.lua's expire_job: a job past its expires_at that has not started never will."""
        for fields in self.hashes.values():
            state = fields[b"state"].decode()
            if state in EXPIRABLE and b"expires_ms" in fields and int(fields[b"expires_ms"]) <= now:
                iso = timefmt.format_ms(now)
                error = {"code": "expired", "type": "expired", "retryable": False,
                         "message": "Job expired before it could start", "occurred_at": iso, "timestamp": iso}
                fields.update({b"state": b"discarded", b"discarded_at": str(now).encode(),
                               b"expired_at": str(now).encode(), b"previous_state": state.encode(),
                               b"error": msgspec.json.encode(error)})
                fields.pop(b"due_ms", None)
                self.emit("job.expired", fields[b"id"].decode(), state="discarded")

    async def record_progress(self, job_id: str, update: ProgressUpdate) -> None:
        """progress.lua's fields: the highest value, the latest message and data, and the
        checkpoint the next attempt starts from."""
        fields = self.hashes[job_id]
        current = fields.get(b"progress")
        if update.value is not None and (current is None or update.value > float(current)):  # it never goes back
            fields[b"progress"] = repr(update.value).encode()
        if update.message is not None:
            fields[b"progress_message"] = update.message.encode()
        if update.data is not None:
            fields[b"progress_data"] = update.data
        if update.checkpoint is not None:
            fields[b"checkpoint"] = update.checkpoint
        fields[b"progress_at"] = str(timefmt.now_ms()).encode()

    # --- an execution and its settlement (ack.lua / nack.lua in memory) -----------------------------

    def start(self, job_id: str) -> dict[bytes, bytes]:
        fields = self.hashes[job_id]
        fields[b"attempt"] = str(int(fields.get(b"attempt", b"0")) + 1).encode()
        fields[b"state"] = b"active"
        fields[b"started_at"] = str(timefmt.now_ms()).encode()
        fields.pop(b"due_ms", None)
        self.emit("job.started", job_id, state="active", attempt=int(fields[b"attempt"]))
        return fields

    def settle(self, job_id: str, outcome: Outcome) -> tuple[str, Any, dict[str, Any] | None]:
        """Apply an execution's outcome; returns (outcome name, result, error)."""
        fields = self.hashes[job_id]
        now = timefmt.now_ms()
        if isinstance(outcome, Completed):
            fields.update({b"state": b"completed", b"completed_at": str(now).encode()})
            if outcome.result:
                fields[b"result"] = outcome.result
            self.emit("job.completed", job_id, state="completed", attempt=int(fields[b"attempt"]))
            return "completed", _json.decode(outcome.result) if outcome.result else None, None
        if isinstance(outcome, Cancelled):
            if fields[b"state"] != b"cancelled":
                self._cancel(job_id)
            return "cancelled", None, None
        error: ErrorInfo = outcome.error  # type: ignore[union-attr]  # every other outcome has one
        policy = _json.decode(retry_display(fields.get(b"retry")))  # the hash holds only what differs
        delay_ms = None
        if isinstance(outcome, RetryLater):
            verdict, delay_ms = "retry", outcome.delay_ms
        elif isinstance(outcome, Discarded):
            verdict = "discard"
        else:
            verdict = failures.verdict(error, requeue=False, non_retryable=list(policy.get("non_retryable_errors") or []))
        record = failures.error_record(error, now)
        count = int(fields.get(b"nerr", b"0")) + 1
        fields.update({b"error": record, b"nerr": str(count).encode(), f"e{count}".encode(): record})
        attempt, max_attempts = int(fields[b"attempt"]), int(fields.get(b"max_attempts", DEFAULT_MAX_ATTEMPTS))
        self.emit("job.failed", job_id, attempt=attempt,
                  error={"code": error.code, "message": error.message, "type": error.type})
        if verdict == "retry" and attempt < max_attempts:
            delay = backoff_ms(fields, attempt) if delay_ms is None else delay_ms
            fields.update({b"state": b"retryable", b"retry_delay_ms": str(delay).encode(),
                           b"next_attempt_at": str(now + delay).encode(), b"due_ms": str(now + delay).encode()})
            state = "retryable"
            self.emit("job.retrying", job_id, state=state, attempt=attempt, max_attempts=max_attempts,
                      next_retry_at=now + delay, retry_delay_ms=delay)
        else:
            fields.update({b"state": b"discarded", b"discarded_at": str(now).encode(), b"completed_at": str(now).encode()})
            state = "discarded"
            dead_letter = verdict == "dead_letter" or (verdict != "discard" and policy.get("on_exhaustion") == "dead_letter")
            if dead_letter:
                fields[b"dead_lettered"] = b"1"
            self.emit("job.discarded", job_id, state=state, total_attempts=attempt, dead_letter=dead_letter)
        name = failures.settled_outcome(verdict, state, on_exhaustion=policy.get("on_exhaustion"))
        return name, None, _json.decode(record)


def _unique_conflict(holder: str, state: str, fingerprint: str) -> Duplicate:
    return Duplicate(
        f"A unique job of this kind already exists (job '{holder}', state '{state}').",
        details={"existing_job_id": holder, "existing_job_state": state, "unique_key": fingerprint},
    )


def backoff_ms(fields: dict[bytes, bytes], attempt: int) -> int:
    """nack.lua's backoff_ms, without the jitter."""
    def scalar(name: str) -> str:  # the hash leaves out a scalar at its default (records.py)
        stored = fields.get(name.encode())
        return stored.decode() if stored is not None else RETRY_FIELD_DEFAULTS[name]

    initial = float(scalar("r_initial_ms"))
    coef = float(scalar("r_coef"))
    max_ms = float(scalar("r_max_ms"))
    strategy = scalar("r_strategy")
    if strategy == "linear":
        raw = initial * attempt
    elif strategy in ("constant", "none"):
        raw = initial
    elif strategy == "polynomial":
        raw = initial * attempt ** coef
    else:
        raw = initial * coef ** (attempt - 1)
    return int(min(raw, max_ms) + 0.5)


class MemoryWorkflows:
    """Workflow creation in memory: validated and planned as the broker plans it, recorded, and
    its first steps enqueued; later steps are not (the fake store does not orchestrate)."""

    def __init__(self, context: MemoryContext) -> None:
        self._context = context
        self._created: dict[str, dict[str, Any]] = {}

    async def create(self, req: WorkflowRequest) -> dict[str, Any]:
        now = timefmt.now_ms()
        kind, members, total = plan(req, now)
        workflow_id = uuid7()
        view = {"id": workflow_id, "type": kind, "name": req.name or kind, "state": "running", "total": total,
                "created_at": timefmt.format_ms(now)}
        self._created[workflow_id] = view
        self._context.record_workflow(req, view)
        roots = [m.job for m in members if not m.deps]
        await self._context.store.enqueue(roots, now_ms=now, workflow={"id": workflow_id})
        return dict(view)

    async def get(self, workflow_id: str) -> dict[str, Any]:
        if workflow_id not in self._created:
            raise NotFound(f"Workflow '{workflow_id}' not found.")
        return dict(self._created[workflow_id])

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        view = self._created.get(workflow_id)
        if view is None:
            raise NotFound(f"Workflow '{workflow_id}' not found.")
        view["state"] = "cancelled"
        return dict(view)


class MemoryContext(TestContext):
    """Fake mode (``inline=False``): jobs are recorded and run only by ``drain``. Inline mode:
    each enqueue runs its job at once, attempt after attempt as its retry policy allows (the
    backoff is not waited for), before the enqueue returns."""

    def __init__(self, *, inline: bool = False, raise_failures: bool = True) -> None:
        super().__init__()
        self.mode = "inline" if inline else "fake"
        self.raise_failures = raise_failures
        self.store = MemoryStore(self._run_inline if inline else _ignore)
        self.memory_workflows = MemoryWorkflows(self)

    def bind_client(self, client: Client, init: Callable[..., None], settings: Settings | None,
                    middleware: Sequence[Any], **options: Any) -> None:
        settings = msgspec.structs.replace(settings or Settings(), redis_url=FAKE_URL)
        init(client, FAKE_URL, settings=settings, middleware=middleware, **options)
        redirect(client, self.store, self.memory_workflows)

    def jobs(self) -> list[dict[str, Any]]:
        return [self.store.envelope(job_id) for job_id in self.store.hashes]

    def event_log(self) -> list[dict[str, Any]]:
        return list(self.store.events)

    def job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.store.hashes:
            raise AssertionError(f"no job {job_id} in this test's {self.mode} store")
        return self.store.envelope(job_id)

    def clear_all(self) -> None:
        super().clear_all()
        self.store.hashes.clear()
        self.store.events.clear()

    async def drain(self, queue: str | None = None, *, max_jobs: int | None = None, timeout_s: float = 30.0,
                    with_scheduled: bool = False) -> DrainSummary:
        """Run the due jobs in FIFO order (within a priority), and what they enqueue; with
        `with_scheduled`, also scheduled jobs and retries before they are due. Inline mode has
        nothing left to drain, unless jobs were scheduled past the clock."""
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while max_jobs is None or len(runs) < max_jobs:
            job_id = self.store.due(queue, with_scheduled=with_scheduled)
            if job_id is None:
                return summary_of(runs)
            if time.monotonic() > deadline:
                return summary_of(runs, timed_out=True)
            runs.append(await self.execute(job_id))
        return summary_of(runs)

    async def execute(self, job_id: str) -> dict[str, Any]:
        """One execution of one job, settled in the store and recorded."""
        fields = self.store.start(job_id)
        job = job_of_hash(fields)
        checkpoint = fields.get(b"checkpoint")
        ctx = self.runner.context(
            job, loop=asyncio.get_running_loop(), last_checkpoint=decode_checkpoint(checkpoint) if checkpoint else None,
            progress=ProgressThrottle(job_id, sink=self.store.record_progress, interval_s=0.0),
        )
        before = self.store.envelope(job_id)
        outcome = await self.runner.run(ctx)
        await ctx.flush_progress()
        if self.store.hashes[job_id][b"state"] == b"cancelled":  # cancelled while it ran
            outcome = Cancelled()
        name, result, error = self.store.settle(job_id, outcome)
        run = execution_record(before, name, result=result, error=error)
        self.executions.append(run)
        return run

    async def _run_inline(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            while True:
                await self.execute(job_id)
                state = self.store.hashes[job_id][b"state"]
                if state != b"retryable":
                    break
            if state == b"discarded" and self.raise_failures:
                raise JobFailed(self.store.envelope(job_id))


def _ignore(_job_ids: list[str]) -> None:
    return None
