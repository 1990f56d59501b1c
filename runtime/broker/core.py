"""The broker: every job operation is one Lua script call (plus, at most, a read that precedes it).

This is the only way the HTTP binding, the scheduler loops and the worker runtime touch job state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis

from runtime import metrics, timefmt
from runtime.broker import failures
from runtime.broker.args_schemas import UNKNOWN_GENERATION, ArgsGuard
from runtime.broker.claim_reply import lean_hash
from runtime.broker.job_versions import VersionRange
from runtime.broker.keys import Keys
from runtime.broker.outage import LeaseExpiryGuard
from runtime.broker.records import NewJob, retry_display
from runtime.broker.render import pairs_to_dict
from runtime.broker.schema_registry import SchemaRegistry
from runtime.broker.scripts import Scripts, Status
from runtime.broker.wire import CommandNotSent
from runtime.config import Settings
from runtime.envelope import ErrorInfo
from runtime.errors import ArgsSchemaMismatch, Conflict, Duplicate, NotFound, QueueFull

_retry_display = msgspec.json.Decoder(dict[str, Any])
# An enqueue checks its args again when the schema registry changed meanwhile; a registry that
# changes this many times in a row during one enqueue is refused rather than chased for ever.
MAX_SCHEMA_CHECKS = 8
_pack = msgspec.msgpack.Encoder().encode


class Enqueued(msgspec.Struct, frozen=True):
    job_id: str
    deduplicated: bool  # an existing unique job returned instead of a new one


class QueuePressure(msgspec.Struct, frozen=True):
    """A bounded queue past its warning threshold after an enqueue (backpressure extension)."""

    queue: str
    depth: int
    bound: int


class EnqueuedJobs(list[Enqueued]):
    """One entry per job given, in order, and the fullest bounded queue past its warning
    threshold, if any."""

    pressure: QueuePressure | None = None


class AckResult(msgspec.Struct, frozen=True):
    job_id: str
    completed_at_ms: int
    queue: str = ""
    type: str = ""


class NackResult(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    state: str
    attempt: int
    max_attempts: int
    retry_delay_ms: int | None = None
    next_attempt_ms: int | None = None
    now_ms: int
    # Filled by `nack` only (its read comes first anyway), for metric labels:
    queue: str = ""
    type: str = ""
    outcome: str = ""  # retried | failed | dead_lettered | released (failures.settled_outcome)


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """One job to complete through ack.lua."""

    job_id: str
    result: bytes = b""  # JSON text; empty when the handler returned nothing
    worker_id: str = ""
    attempt: int | None = None
    claim: str = ""  # the claim's fencing token (the claimed hash's `claim`); "" when unknown


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    progress: float | None
    message: str | None
    data: bytes | None
    updated_at_ms: int | None


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One job to fail through nack.lua, with the verdict already decided: requeue, release,
    worker_lost, worker_lost_shared, outcome_lost, lease_expired, timed_out, retry, nonretryable,
    discard or dead_letter (see nack.lua)."""

    job_id: str
    verdict: str
    error: bytes = b""
    worker_id: str = ""
    attempt: int | None = None
    claim: str = ""  # the claim's fencing token (the claimed hash's `claim`); "" when unknown
    delay_ms: int | None = None  # a handler's own retry delay (verdict retry), instead of the backoff
    min_delay_ms: int | None = None  # a floor under a retry's delay, the backoff's or delay_ms


class HeartbeatResult(msgspec.Struct, frozen=True):
    directive: str
    extended: list[str]
    cancelled: list[str]


def _conflict_for(job_id: str, status: int, state: str, action: str) -> Exception:
    if status == Status.NOT_FOUND:
        return NotFound(f"Job '{job_id}' not found.")
    if status == Status.STALE_CLAIM:
        return Conflict(f"Job '{job_id}' is held by another claim; this {action} is stale.")
    return Conflict(f"Cannot {action} job '{job_id}' in state '{state}'.", details={"state": state})


def _progress_view(reply: list[bytes]) -> Progress:
    return Progress(
        state=reply[1].decode(),
        progress=float(reply[2]) if reply[2] else None,
        message=reply[3].decode() if reply[3] else None,
        data=reply[4] or None,
        updated_at_ms=int(reply[5]) if reply[5] else None,
    )


class Broker:
    """Job operations of one key namespace on one Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        k = self.keys  # enqueue.lua's KEYS, made once
        self._enqueue_key_list = [k.prefix, k.seq, k.delayed, k.expiring, k.events, k.queues, k.cron_next, k.active]
        self.scripts = Scripts(redis, command_timeout_s=settings.redis_command_timeout_ms / 1000,
                               replicas=settings.durability_replicas if settings.durability == "replicated" else 0,
                               replication_timeout_ms=settings.durability_timeout_ms)
        self._maxlen = str(settings.events_maxlen)
        self._lease_expiry = LeaseExpiryGuard(self.scripts, self.keys, settings)
        self.args_guard = ArgsGuard()
        self.schemas = SchemaRegistry(self.scripts, self.keys, redis, self.args_guard)

    # --- enqueue ---------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, now_ms: int, workflow: dict[str, str] | None = None
    ) -> EnqueuedJobs:
        """Insert all jobs or none. A client id that exists already, or a unique-job conflict
        under on_conflict=reject, is a 409 duplicate; under ignore the holder is returned. A
        bounded queue without room for the call's jobs refuses them all (429 QUEUE_FULL)."""
        args: list[str | bytes] = [str(now_ms), self._maxlen, str(len(jobs)), "", "", "", "", ""]
        args += [job.script_arg() for job in jobs]
        args.append("")  # the schema registry generation, set below
        if workflow is not None:
            args.append(_pack([x for pair in workflow.items() for x in pair]))
        if self.args_guard.generation == UNKNOWN_GENERATION:
            # This process' first enqueue: learn the registry first, so that the enqueue script it
            # sends is the one that writes (a call that fails for a stale snapshot writes nothing,
            # and a reply lost after it would leave the client unsure of a job never created).
            try:
                stored = await self.schemas.stored_generation()
            except (rx.ConnectionError, rx.TimeoutError) as err:
                # A read changes nothing: the request is still surely without effect.
                raise CommandNotSent(f"Reading the schema registry's generation failed: {err}") from err
            await self.schemas.refresh_guard(stored)
        for _ in range(MAX_SCHEMA_CHECKS):
            try:
                args[8 + len(jobs)] = self.args_guard.check(jobs)
            except ArgsSchemaMismatch:
                # Refused by this process' snapshot: only a current one may refuse (the schema
                # may have been removed or replaced since). The one extra read is on this path.
                stored = await self.schemas.stored_generation()
                if stored == self.args_guard.generation:
                    raise
                await self.schemas.refresh_guard(stored)
                continue
            reply = await self.scripts.call("enqueue", keys=self._enqueue_keys(), args=args)
            status = int(reply[0])
            if status != Status.SCHEMAS_CHANGED:
                break
            await self.schemas.refresh_guard(reply[1].decode())
        else:
            raise Conflict("The schema registry kept changing during this enqueue; retry it.")
        if status == Status.DUPLICATE_ID:
            dup = jobs[int(reply[1]) - 1]
            raise Duplicate(f"Job '{dup.id}' already exists.", details={"job_id": dup.id})
        if status == Status.UNIQUE_CONFLICT:
            holder, state, fingerprint = (x.decode() for x in reply[2:5])
            raise Duplicate(
                f"A unique job of this kind already exists (job '{holder}', state '{state}').",
                details={"existing_job_id": holder, "existing_job_state": state, "unique_key": fingerprint},
            )
        if status == Status.QUEUE_FULL:
            raise QueueFull(reply[1].decode(), int(reply[2]), int(reply[3]))
        out = EnqueuedJobs()
        if len(reply) > len(jobs) + 1:
            queue, depth, bound = reply[len(jobs) + 1]
            out.pressure = QueuePressure(queue.decode(), int(depth), int(bound))
        created: dict[tuple[str, str], int] = {}  # one metric write per label pair, not per job
        for job, raw in zip(jobs, reply[1:], strict=False):
            text = raw.decode()
            if text.startswith("="):
                out.append(Enqueued(text[1:], True))
            else:
                out.append(Enqueued(text, False))
                labels = (job.queue, job.fields.get("type", ""))
                created[labels] = created.get(labels, 0) + 1
        for (queue, job_type), count in created.items():
            metrics.jobs_enqueued(queue, job_type, count)
        return out

    async def enqueue_cron_tick(
        self, job: NewJob, *, cron_name: str, expression: str, tick_ms: int, next_ms: int,
        overlap: str, now_ms: int,
    ) -> tuple[str, str | None, str | None]:
        """Fire one cron tick: ('fired', id, None), ('claimed', None, None) or ('skipped', existing
        id, reason), reason overlap_skip or unique_conflict (enqueue.lua has recorded the skip)."""
        args: list[str | bytes] = [
            str(now_ms), self._maxlen, "1", cron_name, str(tick_ms), str(next_ms), overlap, expression,
            job.script_arg(), "*",  # a cron's jobs are not checked against the schema registry
        ]
        reply = await self.scripts.call("enqueue", keys=self._enqueue_keys(), args=args)
        status = int(reply[0])
        if status == Status.OK:
            metrics.jobs_enqueued(job.queue, job.fields.get("type", ""), 1)
            return "fired", reply[1].decode(), None
        if status == Status.CRON_CLAIMED:
            return "claimed", None, None
        if status == Status.CRON_SKIPPED:
            return "skipped", reply[1].decode(), reply[2].decode()
        raise Duplicate(f"Job '{job.id}' already exists.")

    def _enqueue_keys(self) -> list[str]:
        return self._enqueue_key_list

    # --- reads -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[bytes, bytes]:
        fields: dict[bytes, bytes] = await self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            raise NotFound(f"Job '{job_id}' not found.")
        return fields

    # --- worker protocol -------------------------------------------------------------------

    async def fetch(
        self,
        queues: Sequence[str],
        *,
        count: int = 1,
        worker_id: str | None = None,
        visibility_ms: int | None = None,
        now_ms: int | None = None,
        quotas: Sequence[int] | None = None,
        exec_grace_ms: int | None = None,
        idle: bool | None = None,
        type_room: Mapping[str, int] | None = None,
        version_ranges: Mapping[str, VersionRange] | None = None,
        tenant: str | None = None,
        lean: bool = False,
    ) -> list[dict[bytes, bytes]]:
        """Claim up to `count` jobs, trying the queues in order. Returns the claimed job hashes;
        with `lean`, each only with the fields a pool reads (`runtime.broker.claim_reply`), which
        costs Redis less than the whole hash.

        With `quotas` (one per queue) a first pass takes at most that many from each queue, and a
        second pass fills the rest in queue order: weighted selection in one call. A worker that
        enforces execution timeouts itself, from its handler's start, passes `exec_grace_ms`: the
        broker's own deadline for these claims comes that much later. With `type_room` (job
        type -> how many more the caller can start), jobs of a type without room are left in
        their queue. With `version_ranges` (job type -> the versions the caller takes), a versioned
        job of such a type outside its range is left in its queue for a compatible caller.

        Suspects (jobs running beside others when their process died) are only given to an
        `idle` caller, one that runs and holds no job: it then gets that one job alone (its hash
        has ``suspect``), and must run nothing else until it is settled.

        With `tenant`, only that tenant's jobs are claimed (the others stay in place).
        """
        now = timefmt.now_ms() if now_ms is None else now_ms
        k = self.keys
        reply = await self.scripts.call(
            "fetch",
            keys=[k.prefix],
            args=[
                str(now), self._maxlen, str(count), worker_id or "",
                str(self.settings.default_visibility_ms),
                "" if visibility_ms is None else str(visibility_ms),
                str(self.settings.scheduler_step_limit), "" if exec_grace_ms is None else str(exec_grace_ms),
                timefmt.format_ms(now), str(len(queues)),
                *queues, *([str(q) for q in quotas] if quotas else [""] * len(queues)),
                "" if idle is None else ("1" if idle else "0"), str(len(type_room or ())),
                *(x for job_type, room in (type_room or {}).items() for x in (job_type, str(max(0, room)))),
                str(len(version_ranges or ())),
                *(x for job_type, r in (version_ranges or {}).items() for x in (job_type, *r.script_args())),
                tenant or "", "lean" if lean else "",
            ],
        )
        if lean:
            return [lean_hash(flat) for flat in reply]
        return [pairs_to_dict(flat) for flat in reply]

    async def suspects_waiting(self, queues: Sequence[str]) -> int:
        """How many jobs that must run alone (see `fetch`'s `idle`) wait in these queues, of those
        that are not paused (a pool must not make way for a job it could not take)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zcard(self.keys.suspects(queue))
                pipe.exists(self.keys.paused(queue))
            replies = await pipe.execute()
        return sum(n for n, paused in zip(replies[0::2], replies[1::2], strict=True) if not paused)

    async def ack(
        self, job_id: str, result: bytes | None = None, *, worker_id: str | None = None,
        attempt: int | None = None,
    ) -> AckResult:
        (outcome,) = await self.ack_many([Completion(job_id=job_id, result=result or b"",
                                                     worker_id=worker_id or "", attempt=attempt)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def ack_many(self, items: Sequence[Completion]) -> list[AckResult | Exception]:
        """Complete many jobs in one ack.lua call; each gets its own result or conflict."""
        now = timefmt.now_ms()
        k = self.keys
        args: list[str | bytes] = [str(now), self._maxlen]
        for item in items:
            args += [item.worker_id, "" if item.attempt is None else str(item.attempt), item.claim, item.result]
        reply = await self.scripts.call(
            "ack", keys=[k.prefix, *(k.job(i.job_id) for i in items)], args=args,
        )
        out: list[AckResult | Exception] = []
        for item, row in zip(items, reply, strict=False):
            status, state = int(row[0]), row[1].decode()
            out.append(AckResult(item.job_id, now, row[3].decode(), row[4].decode()) if status == Status.OK
                       else _conflict_for(item.job_id, status, state, "acknowledge"))
        if any(int(row[2]) for row in reply):
            await self.advance_workflows()
        return out

    async def nack(
        self, job_id: str, error: ErrorInfo | None, *, requeue: bool = False,
        worker_id: str | None = None, attempt: int | None = None,
    ) -> NackResult:
        """Fail an active job; the verdict needs the job's non-retryable list, read first."""
        stored = await self.redis.hmget(self.keys.job(job_id), ["state", "retry", "queue", "type"])
        if stored[0] is None:
            raise NotFound(f"Job '{job_id}' not found.")
        policy = _retry_display.decode(retry_display(stored[1]))
        non_retryable = policy.get("non_retryable_errors", [])
        now = timefmt.now_ms()
        failure = Failure(
            job_id=job_id,
            verdict=failures.verdict(error, requeue=requeue, non_retryable=non_retryable),
            error=failures.error_record(error, now) if error is not None else b"",
            worker_id=worker_id or "",
            attempt=attempt,
        )
        (result,) = await self.fail_many([failure], now_ms=now)
        if isinstance(result, Exception):
            raise result
        outcome = failures.settled_outcome(failure.verdict, result.state, on_exhaustion=policy.get("on_exhaustion"))
        return msgspec.structs.replace(
            result, queue=(stored[2] or b"").decode(), type=(stored[3] or b"").decode(), outcome=outcome,
        )

    async def fail_many(self, items: Sequence[Failure], *, now_ms: int) -> list[NackResult | Exception]:
        """One nack.lua call for many jobs (the scheduler's timeouts, a dead worker's jobs)."""
        k = self.keys
        args: list[str | bytes] = [str(now_ms), self._maxlen, str(self.settings.worker_lost_cap)]
        for item in items:
            args += [item.verdict, item.error, item.worker_id,
                     "" if item.attempt is None else str(item.attempt), item.claim,
                     repr(random.uniform(0.5, 1.5)),
                     "" if item.delay_ms is None else str(item.delay_ms),
                     "" if item.min_delay_ms is None else str(item.min_delay_ms)]
        reply = await self.scripts.call(
            "nack",
            keys=[k.prefix, *(k.job(i.job_id) for i in items)],
            args=args,
        )
        out: list[NackResult | Exception] = []
        for item, row in zip(items, reply, strict=False):
            status, state = int(row[0]), row[1].decode()
            if status != Status.OK:
                out.append(_conflict_for(item.job_id, status, state, "fail"))
                continue
            out.append(NackResult(
                job_id=item.job_id, state=state, attempt=int(row[2]), max_attempts=int(row[3]),
                retry_delay_ms=int(row[4]) if row[4] else None,
                next_attempt_ms=int(row[5]) if row[5] else None, now_ms=now_ms,
            ))
        if any(int(row[6]) for row in reply):
            await self.advance_workflows()
        return out

    async def cancel(self, job_id: str) -> str:
        """Cancel a non-terminal job; returns the state it was in."""
        (outcome,) = await self.cancel_many([job_id])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def cancel_many(self, job_ids: Sequence[str], *, workflow_id: str | None = None) -> list[str | Exception]:
        """Cancel jobs in one cancel.lua call; with a workflow id, the workflow is cancelled first
        (and a workflow that is missing or no longer running is an error, with nothing changed)."""
        k = self.keys
        reply = await self.scripts.call(
            "cancel",
            keys=[k.prefix, k.active, k.delayed, k.expiring, k.events,
                  k.workflow(workflow_id) if workflow_id else k.prefix, *(k.job(i) for i in job_ids)],
            args=[str(timefmt.now_ms()), self._maxlen, "1" if workflow_id else "0", *job_ids],
        )
        if workflow_id and reply and len(reply[0]) < 3:  # the workflow itself was refused
            if int(reply[0][0]) == Status.NOT_FOUND:
                raise NotFound(f"Workflow '{workflow_id}' not found.")
            state = reply[0][1].decode()
            raise Conflict(f"Cannot cancel workflow '{workflow_id}' in state '{state}'.", details={"state": state})
        out: list[str | Exception] = []
        for job_id, row in zip(job_ids, reply, strict=False):
            status, state = int(row[0]), row[1].decode()
            out.append(state if status == Status.OK else _conflict_for(job_id, status, state, "cancel"))
        if any(int(row[2]) for row in reply if len(row) > 2):
            await self.advance_workflows()
        return out

    async def advance_workflows(self) -> int:
        """Apply the workflow outbox (advance.lua); returns the number of entries handled."""
        k = self.keys
        handled: int = await self.scripts.call(
            "advance", keys=[k.prefix, k.workflow_outbox],
            args=[str(timefmt.now_ms()), self._maxlen, str(self.settings.scheduler_step_limit),
                  str(self.settings.parent_results_max_bytes)],
        )
        return handled

    async def heartbeat(
        self, worker_id: str, job_ids: Sequence[str], *, state: str | None = None,
        visibility_ms: int | None = None, active_count: int | None = None,
        claims: Sequence[str] | None = None, interval_ms: int | None = None,
    ) -> HeartbeatResult:
        """Record a beat of `worker_id` (with the interval it beats at, when it says) and extend
        the leases of the listed jobs it holds. With `claims` (one fencing token per id), only
        the claim named is extended: a job this worker claimed again is not kept alive by a beat
        meant for its earlier claim."""
        k = self.keys
        tokens = list(claims) if claims is not None else [""] * len(job_ids)
        reply = await self.scripts.call(
            "heartbeat",
            keys=[k.prefix, k.worker(worker_id), k.workers, k.active],
            args=[
                str(timefmt.now_ms()), worker_id, state or "",
                "" if visibility_ms is None else str(visibility_ms),
                str(self.settings.default_visibility_ms),
                "" if active_count is None else str(active_count),
                "" if interval_ms is None else str(interval_ms), str(len(job_ids)), *job_ids, *tokens,
            ],
        )
        return HeartbeatResult(
            reply[0].decode(), [x.decode() for x in reply[1]], [x.decode() for x in reply[2]]
        )

    async def progress(
        self, job_id: str, *, value: float | None = None, message: str | None = None,
        data: bytes | None = None, checkpoint: bytes | None = None, claim: str = "",
    ) -> Progress:
        """Record progress of an active job (extends its lease); read-only for other states.
        With `claim`, a write for a claim that is no longer current is refused (Conflict)."""
        k = self.keys
        reply = await self.scripts.call(
            "progress", keys=[k.job(job_id), k.active, k.events],
            args=[str(timefmt.now_ms()), self._maxlen, job_id,
                  "" if value is None else repr(min(1.0, max(0.0, value))), message or "",
                  data or b"", checkpoint or b"", str(self.settings.default_visibility_ms), claim],
        )
        if int(reply[0]) != Status.OK:
            raise _conflict_for(job_id, int(reply[0]), reply[1].decode(), "record progress of")
        return _progress_view(reply)

    async def read_progress(self, job_id: str) -> Progress:
        reply = await self.redis.hmget(
            self.keys.job(job_id), ["state", "progress", "progress_message", "progress_data", "progress_at"],
        )
        if reply[0] is None:
            raise NotFound(f"Job '{job_id}' not found.")
        return _progress_view([b"0", *(x or b"" for x in reply)])

    # --- scheduler step --------------------------------------------------------------------

    async def scheduler_step(self) -> int:
        """Promote due jobs, expire TTLs, and fail jobs whose lease or timeout has passed.

        step.lua does the promotion and expiry; expired_leases.lua lists the overdue active jobs,
        which one nack.lua call then fails (each guarded by the claim it was read at, so a job
        acked or claimed again in between is left alone). After an outage no active job is judged
        until the pools had their grace to renew (outage.py); a job's own timeout waits too,
        which its pool enforces meanwhile.
        """
        now = timefmt.now_ms()
        await self.scripts.call(
            "step", keys=[self.keys.prefix],
            args=[str(now), self._maxlen, str(self.settings.scheduler_step_limit), timefmt.format_ms(now)],
        )
        await self.advance_workflows()
        if not await self._lease_expiry.expiry_allowed():
            return 0
        now = timefmt.now_ms()
        k = self.keys
        rows = await self.scripts.call(
            "expired_leases", keys=[k.prefix, k.active],
            args=[str(now), str(self.settings.scheduler_step_limit)],
        )
        if not rows:
            return 0
        items = [self._overdue_failure(row, now) for row in rows]
        results = await self.fail_many(items, now_ms=now)
        await self.count_failures(items, results)
        return len(items)

    async def count_failures(self, items: Sequence[Failure], results: Sequence[NackResult | Exception]) -> None:
        """Metrics for failures the broker decided itself (reaped leases and timeouts, a dead
        pool's jobs): their queue, type and whether they were dead-lettered are read back."""
        done = [(item, r) for item, r in zip(items, results, strict=False) if not isinstance(r, Exception)]
        if not done:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for item, _ in done:
                pipe.hmget(self.keys.job(item.job_id), ["queue", "type", "dead_lettered"])
            rows = await pipe.execute()
        for (item, result), (queue, job_type, dead) in zip(done, rows, strict=False):
            labels = ((queue or b"").decode(), (job_type or b"").decode())
            if item.verdict in ("lease_expired", "timed_out"):  # the reaper's two verdicts
                reason = "lease" if item.verdict == "lease_expired" else "timeout"
                metrics.LEASES_EXPIRED.labels(reason).inc()
                if reason == "timeout":
                    metrics.JOBS_TIMED_OUT.labels(*labels).inc()
            if item.verdict == "release":
                continue
            discarded = result.state == "discarded"
            metrics.job_outcome(*labels, ("dead_lettered" if dead else "failed") if discarded else "retried")

    @staticmethod
    def _overdue_failure(row: list[bytes], now_ms: int) -> Failure:
        job_id, attempt, worker_id, reason, timeout_ms, claim = (x.decode() for x in row)
        if reason == "timeout":
            limit_s = int(timeout_ms) / 1000
            error = failures.server_error(
                "timeout", "timeout", f"Job execution exceeded timeout of {timeout_ms} ms", now_ms,
                timeout_kind="execution", limit_seconds=limit_s,
            )
            verdict = "timed_out"
        else:
            error = failures.server_error(
                "visibility_timeout", "timeout", "Lease expired before the job was acknowledged", now_ms,
            )
            verdict = "lease_expired"
        return Failure(job_id=job_id, verdict=verdict, error=error, worker_id=worker_id, attempt=int(attempt),
                       claim=claim)

    async def close(self) -> None:
        """Close the lean script connection (the redis-py client is its owner's to close)."""
        await self.scripts.close()

    async def ping_ms(self) -> float:
        start = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - start) * 1000
