"""Model-based test of the job lifecycle: random interleavings of every broker operation, each
checked against a small pure-Python reference model.

Operations: enqueue (plain, scheduled, a tenant's, unique under each conflict policy, workflows
chain / group / batch; in a second test (test_model_nested.py) also nested ones, chains, groups and batches inside each
other), fetch by two workers, ack, nack (retry, discard, dead letter), cancel, heartbeat, release,
dead letter retry and delete, cron ticks fired by two schedulers racing for the same tick, the
scheduler step and lease expiry. Time is the test's own clock (``timefmt.now_ms`` is patched and
``now_ms`` is passed where the API takes it), so a rule advances it past leases and schedules
without sleeping; job ids are made deterministic for the same reason (the scripts break score
ties by member, so random ids would make the interleavings irreproducible).

After every step: ``check_integrity`` is clean; every job's state (and attempt, holder, lease,
due time, dead letter flag) equals the model's; the queue counters are exact; a unique key has at
most one live holder; a workflow's state and counters equal the model's and its callbacks become
runnable only after every member resolved; nothing cancelled is ever fetched or settled; a settle
or heartbeat from a superseded claim is refused.

Every worker-side call goes through :class:`WorkerSide`, the one place that knows how a claim is
presented to the broker.

Bounded by default (it runs in ``make test``); ``OJS_MODEL_EXAMPLES=<n>`` runs n examples.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from runtime import timefmt
from runtime.broker import crons as crons_module
from runtime.broker import failures
from runtime.broker import records as records_module
from runtime.broker import workflows as workflows_module
from runtime.broker.admin import Admin
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.crons import Crons
from runtime.broker.integrity import check_integrity
from runtime.broker.job_admin import JobAdmin
from runtime.broker.job_listing import STATE_ORDER, JobFilter
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.envelope import ALL_STATES, CronRequest, ErrorInfo
from runtime.errors import Conflict, Duplicate, NotFound, OJSError
from tests.broker.conftest import Run, body, new_job

# A minute or more: handed out early under xdist (tests/conftest.py).
pytestmark = pytest.mark.long

# --- settings --------------------------------------------------------------------------------

DEFAULT_EXAMPLES = 150  # about 70 s on a shared two-core machine when the broker passes
STEPS = 40
EXAMPLES = int(os.environ.get("OJS_MODEL_EXAMPLES") or DEFAULT_EXAMPLES)

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,  # the same interleavings in every run and on every machine
    database=None,
    report_multiple_bugs=False,  # stop at the first failure and shrink only that one
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- the world the model knows ---------------------------------------------------------------

QUEUE = "default"
WORKERS = ("w1", "w2")
MINUTE_MS = 60_000
START_MS = 1_800_000_000_000 + 1_000  # one second past a minute boundary
RETRY_DELAY_MS = 1_000
LIVE = frozenset({"available", "active", "scheduled", "retryable", "pending"})  # unique default
TERMINAL = frozenset({"completed", "cancelled", "discarded"})
UNIQUE_TYPES = ("uniq.a", "uniq.b")
CONFLICT_POLICIES = ("reject", "ignore", "replace", "replace_except_schedule")
RATE_KEY, RATE_CONCURRENCY = "model-key", 1  # the keyed rate limit of the "limited" jobs


def retry_policy(max_attempts: int, dead_letter: bool) -> dict[str, Any]:
    """Constant 1 s backoff, no jitter: the model knows every retry's due time."""
    return {"max_attempts": max_attempts, "initial_interval": "PT1S", "backoff_strategy": "constant",
            "jitter": False, "on_exhaustion": "dead_letter" if dead_letter else "discard"}


def next_minute(ms: int) -> int:
    """The next fire time of ``* * * * *`` strictly after ``ms``."""
    return (ms // MINUTE_MS + 1) * MINUTE_MS


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


class Ids:
    """UUIDv7-shaped ids that sort in creation order, the same in every run of an example."""

    def __init__(self) -> None:
        self._next: Iterator[int] = itertools.count(1)

    def reset(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> str:
        return f"0190a000-0000-7000-8000-{next(self._next):012x}"


# --- the worker side: the one place that presents a claim to the broker ----------------------


@dataclass(frozen=True)
class Claim:
    """What a worker holds after a fetch: enough to settle or renew exactly that claim."""

    job_id: str
    worker_id: str
    attempt: int
    token: str | None  # the job hash's `claim` field, when the broker issues one
    serial: int  # the test's own count of claims: two claims are never the same claim

    def __repr__(self) -> str:
        return (f"Claim(#{self.serial} job {self.job_id[-4:]}, {self.worker_id}, attempt={self.attempt}, "
                f"token={self.token})")


class WorkerSide:
    """fetch, ack, nack, heartbeat and release as a pool does them. Each returns whether the
    broker accepted the claim; a refusal must be a conflict, never another error."""

    def __init__(self, broker: Broker, run: Run[Any], clock: Clock) -> None:
        self.broker, self.run, self.clock = broker, run, clock
        self._serials = itertools.count(1)

    @staticmethod
    def _guard(claim: Claim) -> dict[str, Any]:
        """How a settle names its claim (Completion / Failure keyword arguments)."""
        return {"worker_id": claim.worker_id, "attempt": claim.attempt, "claim": claim.token or ""}

    def fetch(self, worker_id: str, visibility_ms: int) -> Claim | None:
        got = self.run(self.broker.fetch([QUEUE], worker_id=worker_id, visibility_ms=visibility_ms,
                                         now_ms=self.clock.now))
        if not got:
            return None
        (h,) = got
        token = h.get(b"claim")
        return Claim(h[b"id"].decode(), worker_id, int(h[b"attempt"]), token.decode() if token else None,
                     next(self._serials))

    def ack(self, claim: Claim) -> bool:
        (out,) = self.run(self.broker.ack_many([Completion(job_id=claim.job_id, **self._guard(claim))]))
        return _accepted(out)

    def nack(self, claim: Claim, verdict: str) -> bool:
        """verdict: retry | discard | dead_letter (what the pool decides from the handler's error)."""
        error = ErrorInfo(message=f"model {verdict}")
        failure = Failure(job_id=claim.job_id, verdict=verdict, **self._guard(claim),
                          error=failures.error_record(error, self.clock.now))
        (out,) = self.run(self.broker.fail_many([failure], now_ms=self.clock.now))
        return _accepted(out)

    def release(self, claim: Claim) -> bool:
        failure = Failure(job_id=claim.job_id, verdict="release", **self._guard(claim))
        (out,) = self.run(self.broker.fail_many([failure], now_ms=self.clock.now))
        return _accepted(out)

    def heartbeat(self, claim: Claim, visibility_ms: int) -> tuple[bool, bool]:
        """(lease extended, job reported cancelled)."""
        beat = self.run(self.broker.heartbeat(claim.worker_id, [claim.job_id], visibility_ms=visibility_ms,
                                              claims=[claim.token or ""]))
        return claim.job_id in beat.extended, claim.job_id in beat.cancelled


def _accepted(outcome: object) -> bool:
    if isinstance(outcome, Exception):
        assert isinstance(outcome, Conflict | NotFound), f"a refused claim must be a conflict: {outcome!r}"
        return False
    return True


# --- the reference model ---------------------------------------------------------------------


@dataclass
class Job:
    id: str
    state: str
    max_attempts: int
    dead_letter: bool  # on_exhaustion
    attempt: int = 0
    due: int | None = None  # scheduled / retryable
    lease: int | None = None  # active: visible_until
    claim: Claim | None = None  # active: the one claim that may settle it
    in_dlq: bool = False
    ukey: str | None = None
    workflow: str | None = None
    index: int = -1
    cond: str | None = None  # a callback's condition: always | success | failure
    awaited: bool = False  # a nested batch's callback: its workflow waits for it
    pending: int = 0  # a waiting member's unresolved dependencies
    failed_deps: int = 0  # a waiting callback's dependencies that failed
    # A member put back to work (retried) after its workflow ended runs on its own: the
    # workflow counted it already and does not count it again.
    outside: bool = False
    run_until: int | None = None  # cancelled while active: that run may go on until its lease
    # The last settle and what it left: (claim serial, what, clock, state after). A worker that
    # sends that settle again (its reply was lost) is told it is done, and nothing changes.
    settled: tuple[int, str, int, str] | None = None
    rate_key: str | None = None  # a keyed concurrency limit: RATE_CONCURRENCY active at most


@dataclass
class Workflow:
    id: str
    kind: str
    members: list[str]
    deps: list[list[int]]
    total: int  # plain members (callbacks are not counted)
    open: int  # members the workflow waits for: plain ones and nested batches' callbacks
    completed: int = 0
    failed: int = 0
    callbacks_failed: int = 0
    state: str = "running"

    @property
    def dependents(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, deps in enumerate(self.deps):
            for d in deps:
                out.setdefault(d, []).append(i)
        return out


@dataclass
class Cron:
    name: str
    overlap: str  # skip | allow | cancel_previous
    job_type: str
    unique: bool
    next_ms: int
    last_job: str | None = None


@dataclass
class Model:
    jobs: dict[str, Job] = field(default_factory=dict)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    crons: dict[str, Cron] = field(default_factory=dict)

    # --- queries ---

    def live_holder(self, ukey: str) -> Job | None:
        holders = [j for j in self.jobs.values() if j.ukey == ukey and j.state in LIVE]
        assert len(holders) <= 1, f"model: two holders of {ukey}"
        return holders[0] if holders else None

    def available(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "available"]

    def key_held(self, key: str, now: int) -> int:
        """The key's slots surely taken: its active jobs, and those cancelled while running whose
        run may still go on (until their lease). A claim must find fewer than the limit."""
        return sum(1 for j in self.jobs.values() if j.rate_key == key and (
            j.state == "active" or (j.state == "cancelled" and j.run_until is not None and j.run_until > now)))

    def key_may_hold(self, key: str) -> int:
        """The slots the broker may still count: a cancelled run's slot is freed only when a fetch
        finds the key full (at most every few seconds) after that run's lease."""
        return sum(1 for j in self.jobs.values() if j.rate_key == key and (
            j.state == "active" or (j.state == "cancelled" and j.run_until is not None)))

    def eligible(self) -> list[Job]:
        """Available jobs a fetch must be able to claim: their rate-limit key (if any) surely has
        a free slot."""
        return [j for j in self.available()
                if j.rate_key is None or self.key_may_hold(j.rate_key) < RATE_CONCURRENCY]

    def counts(self) -> Counter[str]:
        return Counter(j.state for j in self.jobs.values() if j.state != "waiting")

    def claim_is_current(self, claim: Claim) -> bool:
        job = self.jobs.get(claim.job_id)
        return job is not None and job.state == "active" and job.claim == claim

    # --- transitions ---

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job

    def promote_due(self, now: int) -> None:
        for job in self.jobs.values():
            if job.state in ("scheduled", "retryable") and job.due is not None and job.due <= now:
                job.state, job.due = "available", None

    def claim(self, claim: Claim, lease: int) -> None:
        job = self.jobs[claim.job_id]
        job.state, job.attempt, job.claim, job.lease = "active", job.attempt + 1, claim, lease
        # An earlier claim's settle is no longer the job's last: a re-send of it is stale now,
        # even once this claim is gone again (its lease spent, the job available as before).
        job.settled = None

    def to_available(self, job: Job) -> None:
        job.state, job.claim, job.lease, job.due = "available", None, None, None

    def end(self, job: Job, state: str, *, dead_letter: bool = False) -> None:
        """A job reaches a terminal state; a workflow member resolves."""
        job.state, job.claim, job.lease, job.due, job.in_dlq = state, None, None, None, dead_letter
        if job.workflow is not None:
            self.resolve(self.workflows[job.workflow], job.index, ok=state == "completed")

    def fail(self, job: Job, verdict: str, now: int) -> None:
        """nack.lua's verdicts: retry, lease_expired, discard, dead_letter."""
        exhausted = job.attempt >= job.max_attempts
        if verdict == "retry" and not exhausted:
            job.state, job.claim, job.lease, job.due = "retryable", None, None, now + RETRY_DELAY_MS
        elif verdict == "lease_expired" and not exhausted:
            self.to_available(job)
        elif verdict == "discard":
            self.end(job, "discarded")
        elif verdict == "dead_letter":
            self.end(job, "discarded", dead_letter=True)
        else:
            self.end(job, "discarded", dead_letter=job.dead_letter)

    def cancel(self, job: Job) -> None:
        job.run_until = job.lease if job.state == "active" else None
        self.end(job, "cancelled")

    def resolve(self, wf: Workflow, index: int, *, ok: bool) -> None:
        """A member resolved: count it, release or cancel what depended on it, finish the workflow.
        Only a member still waiting is ever enqueued or cancelled by its workflow. A callback whose
        condition does not hold is skipped: cancelled, but no failure for what follows it."""
        if wf.state != "running":
            return
        dependents = wf.dependents
        stack = [(index, "ok" if ok else "failed")]
        while stack:
            m, how = stack.pop()
            member = self.jobs[wf.members[m]]
            if member.cond is None:
                if how == "ok":
                    wf.completed += 1
                else:
                    wf.failed += 1
            elif member.awaited and how == "failed":
                wf.callbacks_failed += 1
            if member.cond is None or member.awaited:
                wf.open -= 1
            for d in dependents.get(m, []):
                dep = self.jobs.get(wf.members[d])
                if dep is None or dep.state != "waiting":
                    continue
                if how == "failed" and dep.cond is None:
                    dep.state = "cancelled"
                    stack.append((d, "failed"))
                    continue
                dep.failed_deps += how == "failed"
                dep.pending -= 1
                if dep.pending > 0:
                    continue
                runs = dep.cond in (None, "always") or (dep.cond == "success" and dep.failed_deps == 0) or (
                    dep.cond == "failure" and dep.failed_deps > 0)
                if runs:
                    dep.state = "available"
                else:
                    dep.state = "cancelled"
                    stack.append((d, "skipped"))
        if wf.open == 0:
            wf.state = "completed" if wf.failed == 0 and wf.callbacks_failed == 0 else "failed"

    def reopen(self, job: Job) -> None:
        """An ended job put back to work (a retry). A workflow member only ever is once its
        workflow has ended (while it runs, the retry is refused): it then runs on its own."""
        if job.workflow is not None:
            assert self.workflows[job.workflow].state != "running", "model: reopened a running workflow's member"
            job.outside = True
        job.state, job.attempt, job.in_dlq, job.run_until = "available", 0, False, None


def retry_allowed(model: Model, job_id: str, *, dead_letter_only: bool, now: int) -> bool:
    """Whether a retry puts the job back to work (dlq_retry.lua). The data plane's retries only
    dead-lettered jobs, the operator's any discarded or cancelled one. Refused: a unique job
    whose key another live job holds (two live holders are never allowed), and a member of a
    workflow still running (the workflow resolved the member already and acted on it; running it
    again inside the workflow would count it twice). A member of an ended workflow is retried and
    runs on its own (Model.reopen). A job cancelled while running is not retried before that
    run's lease has passed: it may still be running."""
    job = model.jobs.get(job_id)
    if job is None:
        return False
    if job.state == "cancelled" and job.run_until is not None and job.run_until > now:
        return False
    if not (job.in_dlq if dead_letter_only else job.state in ("discarded", "cancelled")):
        return False
    if job.ukey is not None and model.live_holder(job.ukey) is not None:
        return False
    return job.workflow is None or model.workflows[job.workflow].state != "running"


# --- the machine -----------------------------------------------------------------------------


@dataclass
class Env:
    broker: Broker
    run: Run[Any]
    clock: Clock
    ids: Ids


class StaleDueView:
    """The Redis client as a second scheduler sees it when it read the due crons just before the
    first one fired them: the same due list (its race), everything else live."""

    def __init__(self, redis: Any, due: list[tuple[bytes, float]]) -> None:
        self._redis, self._due = redis, due

    async def zrangebyscore(self, *args: Any, **kwargs: Any) -> list[tuple[bytes, float]]:
        return self._due

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)


# Nested workflow shapes: "s" is a step; (kind, parts) a chain or group; ("batch", parts, callbacks).
Shape = Any
NESTED_SHAPES: tuple[Shape, ...] = (
    ("chain", ["s", ("group", ["s", "s"]), "s"]),
    ("group", [("chain", ["s", "s"]), ("batch", ["s", "s"], ("on_success", "on_failure"))]),
    ("chain", ["s", ("batch", ["s", ("chain", ["s", "s"])], ("on_complete", "on_failure")), "s"]),
    ("batch", [("group", ["s", "s"]), "s"], ("on_complete", "on_success")),
    ("chain", [("group", [("chain", ["s", "s"]), ("batch", ["s"], ("on_complete", "on_success", "on_failure"))]),
               "s"]),
)
CONDITIONS = {"on_complete": "always", "on_success": "success", "on_failure": "failure"}


def nested_request(shape: Shape, step: Any, callback: Any) -> dict[str, Any]:
    if shape == "s":
        return dict(step())
    kind, parts = shape[0], shape[1]
    out: dict[str, Any] = {"type": kind, "steps" if kind == "chain" else "jobs":
                           [nested_request(p, step, callback) for p in parts]}
    if kind == "batch":
        out["callbacks"] = {name: callback() for name in shape[2]}
    return out


def nested_graph(shape: Shape, deps: list[int], level: int, out: list[tuple[list[int], str | None, bool]]) -> list[int]:
    """Append each member's (dependencies, callback condition, awaited) in request order; return
    the part's exit members (what follows it waits for)."""
    if shape == "s":
        out.append((list(deps), None, False))
        return [len(out) - 1]
    kind, parts = shape[0], shape[1]
    if kind == "chain":
        exits = deps
        for part in parts:
            exits = nested_graph(part, exits, level + 1, out)
        return exits
    exits = []
    for part in parts:
        exits += nested_graph(part, deps, level + 1, out)
    if kind == "batch":
        fired = []
        for name in ("on_complete", "on_success", "on_failure"):
            if name in shape[2]:
                out.append((list(exits), CONDITIONS[name], level > 0))
                fired.append(len(out) - 1)
        if level > 0:
            exits = exits + fired
    return exits


CRONS = (  # name, overlap policy, job type, unique (reject) template
    ("tick-skip", "skip", "cron.skip", False),
    ("tick-cancel", "cancel_previous", "cron.cancel", False),
    ("tick-unique", "allow", "uniq.a", True),
)


class BrokerMachine(RuleBasedStateMachine):
    env: ClassVar[Env]

    jobs = Bundle("jobs")
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        env = self.env
        self.broker, self.run, self.clock = env.broker, env.run, env.clock
        self.run(self.broker.redis.flushdb())
        self.clock.now = START_MS
        env.ids.reset()
        self.workers = WorkerSide(self.broker, self.run, self.clock)
        self.admin = Admin(self.broker)
        self.job_admin = JobAdmin(self.broker)
        self.model = Model()
        self.cancelled_ever: set[str] = set()
        self.schedulers = (Crons(self.broker), Crons(self.broker))
        for name, overlap, job_type, unique in CRONS:
            options: dict[str, Any] = {"retry": retry_policy(2, False)}
            if unique:
                options["unique"] = {"keys": ["type"], "on_conflict": "reject"}
            self.run(self.schedulers[0].register(CronRequest(
                name=name, expression="* * * * *", overlap_policy=overlap,  # type: ignore[arg-type]
                type=job_type, args=[], options=options)))
            self.model.crons[name] = Cron(name, overlap, job_type, unique, next_minute(self.clock.now))

    def _refused(self, coro: Any, kind: type[Exception] | tuple[type[Exception], ...], what: str) -> None:
        """The call must fail with `kind` (and, being atomic, change nothing)."""
        try:
            self.run(coro)
        except kind:
            return
        raise AssertionError(f"{what}: accepted, expected a refusal ({kind})")

    # --- enqueue ---

    def _new(self, job_type: str, *, max_attempts: int, dead_letter: bool, delay_ms: int | None,
             unique: str | None = None) -> dict[str, Any]:
        options: dict[str, Any] = {"retry": retry_policy(max_attempts, dead_letter)}
        if delay_ms:
            options["delay_ms"] = delay_ms
        if unique:
            options["unique"] = {"keys": ["type"], "on_conflict": unique}
        return body(job_type, **options)

    def _enqueue(self, b: dict[str, Any]) -> Any:
        now = self.clock.now
        (done,) = self.run(self.broker.enqueue([new_job(b, now_ms=now)], now_ms=now))
        # A holder replaced by a unique enqueue queued its workflow on the outbox; the scheduler
        # loop applies it (enqueue does not), as this call does.
        self.run(self.broker.advance_workflows())
        return done

    @rule(target=jobs, max_attempts=st.integers(1, 3), dead_letter=st.booleans(),
          delay_ms=st.sampled_from([None, None, 2_000, 30_000]))
    def enqueue(self, max_attempts: int, dead_letter: bool, delay_ms: int | None) -> Any:
        done = self._enqueue(self._new("plain", max_attempts=max_attempts, dead_letter=dead_letter,
                                       delay_ms=delay_ms))
        assert not done.deduplicated
        self.model.add(self._job(done.job_id, max_attempts, dead_letter, delay_ms))
        return done.job_id

    @rule(target=jobs, tenant=st.sampled_from(["tenant-a", "tenant-b"]), max_attempts=st.integers(1, 3),
          dead_letter=st.booleans(), delay_ms=st.sampled_from([None, None, 2_000]))
    def enqueue_for_tenant(self, tenant: str, max_attempts: int, dead_letter: bool, delay_ms: int | None) -> Any:
        """A tenant's job: placed by its fair-queuing tag, listed among its tenant's unfinished
        jobs until it ends (the integrity check holds the set to the job states)."""
        b = self._new("plain", max_attempts=max_attempts, dead_letter=dead_letter, delay_ms=delay_ms)
        b["meta"] = {"tenant_id": tenant}
        done = self._enqueue(b)
        self.model.add(self._job(done.job_id, max_attempts, dead_letter, delay_ms))
        return done.job_id

    @rule(target=jobs, max_attempts=st.integers(1, 3), delay_ms=st.sampled_from([None, None, 2_000]))
    def enqueue_limited(self, max_attempts: int, delay_ms: int | None) -> Any:
        """A job of a keyed concurrency limit: at most RATE_CONCURRENCY of them active at once,
        whatever way the others left `active`."""
        b = self._new("limited", max_attempts=max_attempts, dead_letter=False, delay_ms=delay_ms)
        b["options"]["rate_limit"] = {"key": RATE_KEY, "concurrency": RATE_CONCURRENCY}
        done = self._enqueue(b)
        job = self._job(done.job_id, max_attempts, False, delay_ms)
        job.rate_key = RATE_KEY
        self.model.add(job)
        return done.job_id

    def _job(self, job_id: str, max_attempts: int, dead_letter: bool, delay_ms: int | None,
             ukey: str | None = None) -> Job:
        due = self.clock.now + delay_ms if delay_ms else None
        return Job(job_id, "scheduled" if due else "available", max_attempts, dead_letter, due=due, ukey=ukey)

    @rule(target=jobs, key=st.sampled_from(UNIQUE_TYPES), policy=st.sampled_from(CONFLICT_POLICIES),
          delay_ms=st.sampled_from([None, 2_000, 30_000]), max_attempts=st.integers(1, 2),
          dead_letter=st.booleans())
    def enqueue_unique(self, key: str, policy: str, delay_ms: int | None, max_attempts: int,
                       dead_letter: bool) -> Any:
        holder = self.model.live_holder(key)
        b = self._new(key, max_attempts=max_attempts, dead_letter=dead_letter, delay_ms=delay_ms, unique=policy)
        if holder is not None and policy == "reject":
            try:
                self._enqueue(b)
            except Duplicate:
                return multiple()
            raise AssertionError(f"unique enqueue ({policy}) accepted while {holder.id} holds {key}")
        done = self._enqueue(b)
        if holder is not None and policy == "ignore":
            assert (done.job_id, done.deduplicated) == (holder.id, True), "ignore returns the holder"
            return multiple()
        assert not done.deduplicated, f"a new job was expected, got the holder {done.job_id}"
        job = self._job(done.job_id, max_attempts, dead_letter, delay_ms, ukey=key)
        if holder is not None:  # replace | replace_except_schedule
            kept_schedule = holder.due if holder.state == "scheduled" else None
            self._cancelled(holder)
            if policy == "replace_except_schedule" and kept_schedule is not None:
                job.state, job.due = "scheduled", kept_schedule
        self.model.add(job)
        return done.job_id

    @rule(target=jobs, kind=st.sampled_from(["chain", "group", "batch"]), size=st.integers(1, 3),
          callbacks=st.sets(st.sampled_from(["on_complete", "on_success", "on_failure"]), min_size=1),
          max_attempts=st.integers(1, 2), dead_letter=st.booleans(),
          unique_first=st.sampled_from([None, None, None, "ignore", "reject"]),
          unique_key=st.sampled_from(UNIQUE_TYPES))
    def enqueue_workflow(self, kind: str, size: int, callbacks: set[str], max_attempts: int,
                         dead_letter: bool, unique_first: str | None, unique_key: str) -> Any:
        steps = [self._new("wf.step", max_attempts=max_attempts, dead_letter=dead_letter, delay_ms=None,
                           unique=unique_first if i == 0 else None) for i in range(size)]
        if unique_first:
            steps[0]["type"] = unique_key
        named = [c for c in ("on_complete", "on_success", "on_failure") if c in callbacks] if kind == "batch" else []
        req = WorkflowRequest(
            type=kind,  # type: ignore[arg-type]
            steps=steps if kind == "chain" else None, jobs=None if kind == "chain" else steps,
            callbacks={c: self._new("wf.callback", max_attempts=1, dead_letter=dead_letter, delay_ms=None)
                       for c in named} or None,
        )
        flows = Workflows(self.broker)
        conflict = unique_first is not None and self.model.live_holder(unique_key) is not None
        if conflict:
            # A member a unique policy would not create cannot be part of the graph: the whole
            # workflow is refused, nothing is created.
            self._refused(flows.create(req), OJSError, f"workflow whose first member conflicts on {unique_key}")
            return multiple()
        view = self.run(flows.create(req))
        raw = self.run(self.broker.redis.hgetall(self.broker.keys.workflow(view["id"])))
        members = [raw[f"j{i}".encode()].decode() for i in range(int(raw[b"members"]))]
        all_deps: list[list[int]] = []
        conds = {size + n: {"on_complete": "always", "on_success": "success", "on_failure": "failure"}[c]
                 for n, c in enumerate(named)}
        for i in range(len(members)):
            deps = ([i - 1] if i and kind == "chain" else []) if i < size else list(range(size))
            all_deps.append(deps)
            job = Job(members[i], "waiting" if deps else "available",
                      max_attempts if i < size else 1, dead_letter, workflow=view["id"], index=i,
                      cond=conds.get(i), pending=len(deps),
                      ukey=unique_key if unique_first and i == 0 else None)
            self.model.add(job)
        self.model.workflows[view["id"]] = Workflow(view["id"], kind, members, all_deps, size, open=size)
        return multiple(*members)

    # --- the worker side ---

    @rule(target=claims, worker=st.sampled_from(WORKERS), visibility_ms=st.sampled_from([5_000, 60_000]))
    def fetch(self, worker: str, visibility_ms: int) -> Any:
        claim = self._fetch(worker, visibility_ms)
        return multiple() if claim is None else claim

    def _fetch(self, worker: str, visibility_ms: int) -> Claim | None:
        self.model.promote_due(self.clock.now)
        claim = self.workers.fetch(worker, visibility_ms)
        if claim is None:
            assert not self.model.eligible(), "fetch returned nothing while jobs were eligible"
            return None
        assert claim.job_id not in self.cancelled_ever, f"a cancelled job was fetched: {claim}"
        job = self.model.jobs.get(claim.job_id)
        assert job is not None and job.state == "available", (
            f"fetched {claim} whose model state is {job.state if job else 'gone'}")
        assert claim.attempt == job.attempt + 1
        assert job.rate_key is None or self.model.key_held(job.rate_key, self.clock.now) < RATE_CONCURRENCY, (
            f"fetched {claim} past its key's concurrency")
        self.model.claim(claim, self.clock.now + visibility_ms)
        return claim

    @rule(target=claims, claim=claims)
    def lease_lapses_and_same_worker_reclaims(self, claim: Claim) -> Any:
        """A handler outlives its lease: the reaper hands the job back and the same worker's pool
        claims until it holds that job again, while the old run, still going, beats for its
        old claim."""
        job = self.model.jobs.get(claim.job_id)
        if not self.model.claim_is_current(claim) or job is None or job.lease is None:
            return multiple()
        self.clock.now = max(self.clock.now, job.lease)
        self.scheduler_step()
        got = []
        while (again := self._fetch(claim.worker_id, 60_000)) is not None:
            got.append(again)
            if again.job_id == claim.job_id:
                break
        self.heartbeat(claim, 60_000)
        return multiple(*got)

    def _resend(self, claim: Claim, what: str) -> str | None:
        """Whether this settle repeats the last one applied to its job ("must": the broker
        recognises it and answers done; "may": a nack's repeat, recognised while its error record
        is the job's last, which the model does not track), else None."""
        job = self.model.jobs.get(claim.job_id)
        if job is None or job.settled is None or job.claim is not None:
            return None  # never settled since its last claim, or claimed now
        serial, kind, at, state_after = job.settled
        if serial != claim.serial or kind != what:
            return None
        if kind in ("ack", "release"):
            return "must" if job.state == state_after else None
        return "may" if at == self.clock.now else None

    def _settle(self, claim: Claim, accepted: bool, what: str) -> bool:
        resend = self._resend(claim, what)
        if resend is not None:
            assert accepted or resend == "may", f"a re-sent {what} of a settled claim was refused: {claim}"
            return False  # done already: nothing changes (the invariants check it)
        current = self.model.claim_is_current(claim)
        if accepted:
            assert claim.job_id not in self.cancelled_ever, f"{what} of a cancelled job accepted: {claim}"
        assert accepted == current, (
            f"stale claim accepted by {what}: {claim}" if accepted else f"current claim refused by {what}: {claim}")
        return current

    @rule(claim=claims)
    def ack(self, claim: Claim) -> None:
        if self._settle(claim, self.workers.ack(claim), "ack"):
            job = self.model.jobs[claim.job_id]
            self.model.end(job, "completed")
            job.settled = (claim.serial, "ack", self.clock.now, job.state)

    @rule(claim=claims, verdict=st.sampled_from(["retry", "discard", "dead_letter"]))
    def nack(self, claim: Claim, verdict: str) -> None:
        if self._settle(claim, self.workers.nack(claim, verdict), f"nack {verdict}"):
            job = self.model.jobs[claim.job_id]
            self.model.fail(job, verdict, self.clock.now)
            job.settled = (claim.serial, f"nack {verdict}", self.clock.now, job.state)

    @rule(claim=claims)
    def release(self, claim: Claim) -> None:
        if self._settle(claim, self.workers.release(claim), "release"):
            job = self.model.jobs[claim.job_id]
            job.attempt -= 1
            self.model.to_available(job)
            job.settled = (claim.serial, "release", self.clock.now, job.state)

    @rule(claim=claims, visibility_ms=st.sampled_from([5_000, 60_000]))
    def heartbeat(self, claim: Claim, visibility_ms: int) -> None:
        extended, told_cancelled = self.workers.heartbeat(claim, visibility_ms)
        current = self._settle(claim, extended, "heartbeat")
        job = self.model.jobs.get(claim.job_id)
        if current and job is not None and job.lease is not None:
            job.lease = max(job.lease, self.clock.now + visibility_ms)  # a heartbeat only extends
        if job is not None and job.state == "cancelled":
            assert told_cancelled, f"heartbeat did not report the cancellation of {claim}"

    # --- operator and client operations ---

    def _cancelled(self, job: Job) -> None:
        self.cancelled_ever.add(job.id)
        self.model.cancel(job)

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        job = self.model.jobs.get(job_id)
        if job is None:
            self._refused(self.broker.cancel(job_id), NotFound, f"cancel of deleted {job_id}")
        elif job.state in TERMINAL:
            self._refused(self.broker.cancel(job_id), Conflict, f"cancel of {job.state} {job_id}")
        else:
            assert self.run(self.broker.cancel(job_id)) == job.state
            self._cancelled(job)

    @rule(job_id=jobs)
    def dead_letter_retry(self, job_id: str) -> None:
        if not retry_allowed(self.model, job_id, dead_letter_only=True, now=self.clock.now):
            self._refused(self.admin.dead_letter_retry(job_id), OJSError, f"dead letter retry of {job_id}")
            return
        self.run(self.admin.dead_letter_retry(job_id))
        self.model.reopen(self.model.jobs[job_id])

    @rule(job_id=jobs)
    def dead_letter_delete(self, job_id: str) -> None:
        job = self.model.jobs.get(job_id)
        if job is None or not job.in_dlq:
            self._refused(self.admin.dead_letter_delete(job_id), NotFound, f"dead letter delete of {job_id}")
            return
        self.run(self.admin.dead_letter_delete(job_id))
        del self.model.jobs[job_id]

    # --- the operator (admin API) ---

    def _workflow_running(self, job: Job) -> bool:
        return job.workflow is not None and self.model.workflows[job.workflow].state == "running"

    @rule(job_id=jobs)
    def admin_retry(self, job_id: str) -> None:
        """Any discarded or cancelled job back to available, attempts reset; refused for a live
        job, a unique job whose key another live job holds, and a member of a running workflow."""
        job = self.model.jobs.get(job_id)
        if job is None:
            self._refused(self.job_admin.retry(job_id), NotFound, f"admin retry of deleted {job_id}")
            return
        if not retry_allowed(self.model, job_id, dead_letter_only=False, now=self.clock.now):
            self._refused(self.job_admin.retry(job_id), Conflict, f"admin retry of {job.state} {job_id}")
            return
        self.run(self.job_admin.retry(job_id))
        self.model.reopen(job)
        self.cancelled_ever.discard(job_id)

    @rule(job_id=jobs)
    def admin_delete(self, job_id: str) -> None:
        """An ended job removed for good; a live job, or a member of a running workflow, is not."""
        job = self.model.jobs.get(job_id)
        if job is None:
            self._refused(self.job_admin.delete(job_id), NotFound, f"admin delete of deleted {job_id}")
        elif job.state not in TERMINAL or self._workflow_running(job) or self._may_still_run(job):
            self._refused(self.job_admin.delete(job_id), Conflict, f"admin delete of {job.state} {job_id}")
        else:
            self.run(self.job_admin.delete(job_id))
            del self.model.jobs[job_id]

    def _may_still_run(self, job: Job) -> bool:
        """Cancelled while running, and that run's lease not passed: it may still be going."""
        return job.state == "cancelled" and job.run_until is not None and job.run_until > self.clock.now

    @rule(state=st.sampled_from(sorted(TERMINAL)))
    def purge(self, state: str) -> None:
        """Every ended job of that state goes, but the members of running workflows and the
        cancelled runs that may still be going."""
        deleted, stopped = self.run(self.job_admin.purge(QUEUE, [state], older_than_ms=None))
        gone = [j.id for j in self.model.jobs.values()
                if j.state == state and not self._workflow_running(j) and not self._may_still_run(j)]
        assert (deleted, stopped) == (len(gone), None), f"purge {state}: {deleted}, model {len(gone)}"
        for job_id in gone:
            del self.model.jobs[job_id]

    @rule()
    def bulk_cancel_available(self) -> None:
        result = self.run(self.job_admin.bulk("cancel", flt=JobFilter(queue=QUEUE, state="available"), ids=None,
                                              cursor=None, dry_run=False))
        expected = sorted(j.id for j in self.model.available())
        assert sorted(result.job_ids) == expected and result.failed == 0, (result, expected)
        for job_id in result.job_ids:
            job = self.model.jobs[job_id]
            if job.state == "available":  # not cancelled already by an earlier one's workflow
                self._cancelled(job)

    # --- time ---

    @rule(ms=st.sampled_from([1_000, 6_000, 61_000]), step=st.booleans())
    def advance_clock(self, ms: int, step: bool) -> None:
        self.clock.now += ms
        if step:
            self.scheduler_step()

    @rule()
    def scheduler_step(self) -> None:
        now = self.clock.now
        self.run(self.broker.scheduler_step())
        self.model.promote_due(now)
        for job in list(self.model.jobs.values()):
            if job.state == "active" and job.lease is not None and job.lease <= now:
                self.model.fail(job, "lease_expired", now)

    @rule(target=jobs, racing=st.booleans())
    def cron_tick(self, racing: bool) -> Any:
        """The first scheduler fires the due ticks; with `racing`, a second one read the same due
        list before the first fired and fires it too, as two replicas do."""
        now = self.clock.now
        k = self.broker.keys
        due = self.run(self.broker.redis.zrangebyscore(k.cron_next, "-inf", now, withscores=True))
        first, second = self.schedulers
        before = {name: self._last_cron_job(name) for name in self.model.crons}
        self.run(first.tick())
        if racing:
            second.redis = StaleDueView(self.broker.redis, due)
            try:
                self.run(second.tick())
            finally:
                second.redis = self.broker.redis
        fired = []
        for cron in sorted(self.model.crons.values(), key=lambda c: c.name):
            if cron.next_ms > now:
                continue
            new_id = self._fire_in_model(cron, before[cron.name], self._last_cron_job(cron.name))
            cron.next_ms = next_minute(max(cron.next_ms, now))
            if new_id is not None:
                fired.append(new_id)
        return multiple(*fired)

    def _last_cron_job(self, name: str) -> str | None:
        raw = self.run(self.broker.redis.hget(self.broker.keys.cron_state(name), "last_job_id"))
        return raw.decode() if raw else None

    def _fire_in_model(self, cron: Cron, before: str | None, after: str | None) -> str | None:
        """One tick of one cron in the model; returns the job it created. A unique conflict is a
        skipped tick (the schedule goes on)."""
        last = self.model.jobs.get(cron.last_job) if cron.last_job else None
        if cron.overlap == "skip" and last is not None and last.state not in TERMINAL:
            assert after == before, f"cron {cron.name}: fired although its last job is {last.state}"
            return None
        if cron.unique and self.model.live_holder(cron.job_type) is not None:
            assert after == before, f"cron {cron.name}: fired although its unique key is held"
            return None
        assert after is not None and after != before, f"cron {cron.name}: tick at {cron.next_ms} did not fire"
        if cron.overlap == "cancel_previous" and last is not None and last.state not in TERMINAL:
            self._cancelled(last)
        self.model.add(Job(after, "available", 2, False, ukey=cron.job_type if cron.unique else None))
        cron.last_job = after
        return after

    # --- invariants ---

    @invariant()
    def broker_matches_model(self) -> None:
        # Cancelled for good: a cancelled job must never be fetched or settled again.
        self.cancelled_ever.update(j.id for j in self.model.jobs.values() if j.state == "cancelled")
        self.store_is_consistent()
        self.jobs_match_model()
        self.counters_are_exact()
        self.unique_keys_have_one_live_holder()
        self.workflows_match_model()
        self.crons_stay_scheduled()
        self.listings_match_model()

    def listings_match_model(self) -> None:
        """The admin listing of each state holds exactly the model's jobs in it, with an exact
        total, and a walk over every state sees every job once."""
        listing = self.job_admin.listing
        for state in STATE_ORDER:
            page = self.run(listing.page(JobFilter(queue=QUEUE, state=state), limit=100, ids_only=True))
            want = sorted(j.id for j in self.model.jobs.values() if j.state == state)
            assert sorted(i["id"] for i in page.items) == want, f"listing of {state}"
            assert page.total == len(want), f"listing total of {state}: {page.total}, model {len(want)}"
        walked: list[str] = []
        cursor = None
        while True:
            page = self.run(listing.page(JobFilter(), limit=3, cursor=cursor, ids_only=True))
            walked += [i["id"] for i in page.items]
            if (cursor := page.next_cursor) is None:
                break
        listed = sorted(j.id for j in self.model.jobs.values() if j.state in STATE_ORDER)
        assert sorted(walked) == listed, "walk over every state"

    def store_is_consistent(self) -> None:
        problems = self.run(check_integrity(self.broker.redis, self.broker.keys))
        assert problems == [], "check_integrity:\n" + "\n".join(problems)

    def jobs_match_model(self) -> None:
        k = self.broker.keys
        ids = list(self.model.jobs)
        stored = self.run(self._read_jobs(ids))
        for job_id, (h, due) in zip(ids, stored, strict=True):
            job = self.model.jobs[job_id]
            seen = {
                "state": h.get("state"), "attempt": int(h.get("attempt") or 0),
                "dead_lettered": h.get("dead_lettered") == "1" and h.get("state") == "discarded",
            }
            want: dict[str, Any] = {"state": job.state, "attempt": job.attempt, "dead_lettered": job.in_dlq}
            if job.state == "waiting":
                seen["attempt"] = want["attempt"] = 0
            if job.state == "active" and job.claim is not None:
                seen["worker_id"], want["worker_id"] = h.get("worker_id"), job.claim.worker_id
                seen["lease"], want["lease"] = int(h.get("visible_until") or 0), job.lease
            if job.state in ("scheduled", "retryable"):
                seen["due"], want["due"] = due, job.due
            assert seen == want, f"job {job_id} ({h.get('type')}): broker {seen}, model {want}"
        count = self.run(self._count_job_keys(k.job("")))
        assert count == len(self.model.jobs), f"{count} job hashes, the model has {len(self.model.jobs)}"

    async def _read_jobs(self, ids: list[str]) -> list[tuple[dict[str, str], int | None]]:
        k = self.broker.keys
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(k.job(job_id))
                pipe.zscore(k.delayed, job_id)
            replies = await pipe.execute()
        out = []
        for h, due in zip(replies[0::2], replies[1::2], strict=True):
            out.append(({a.decode(): b.decode() for a, b in h.items()}, None if due is None else int(due)))
        return out

    async def _count_job_keys(self, prefix: str) -> int:
        return sum([1 async for _ in self.broker.redis.scan_iter(match=prefix + "*", count=1000)])

    def counters_are_exact(self) -> None:
        raw = self.run(self.broker.redis.hgetall(self.broker.keys.counts(QUEUE)))
        stored = {s.decode(): int(v) for s, v in raw.items() if int(v) != 0}
        assert stored == dict(self.model.counts()), f"counts {stored}, model {dict(self.model.counts())}"
        assert set(stored) <= {s.value for s in ALL_STATES}

    def unique_keys_have_one_live_holder(self) -> None:
        ids = [j.id for j in self.model.jobs.values() if j.ukey]
        states = self.run(self._states(ids))
        holders: Counter[str] = Counter()
        for job_id, state in zip(ids, states, strict=True):
            if state in LIVE:
                holders[self.model.jobs[job_id].ukey or ""] += 1
        assert all(n <= 1 for n in holders.values()), f"live holders per unique key: {dict(holders)}"

    async def _states(self, ids: list[str]) -> list[str | None]:
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.broker.keys.job(job_id), "state")
            return [s.decode() if s else None for s in await pipe.execute()]

    def workflows_match_model(self) -> None:
        for wf in self.model.workflows.values():
            raw = self.run(self.broker.redis.hmget(self.broker.keys.workflow(wf.id), ["state", "completed", "failed"]))
            seen = (raw[0].decode(), int(raw[1]), int(raw[2]))
            assert seen == (wf.state, wf.completed, wf.failed), (
                f"workflow {wf.kind} {wf.id}: broker (state, completed, failed) {seen}, "
                f"model {(wf.state, wf.completed, wf.failed)}")
            states = self.run(self._states(wf.members))
            resolved = [s is None or s in TERMINAL or getattr(self.model.jobs.get(m), "outside", False)
                        for m, s in zip(wf.members, states, strict=True)]
            for i, member in enumerate(wf.members):
                job = self.model.jobs.get(member)
                if job is not None and job.cond is not None and states[i] not in ("waiting", "cancelled"):
                    assert all(resolved[d] for d in wf.deps[i]), (
                        f"callback {member} is {states[i]} while its batch's members are "
                        f"{[states[d] for d in wf.deps[i]]}")

    def crons_stay_scheduled(self) -> None:
        for cron in self.model.crons.values():
            score = self.run(self.broker.redis.zscore(self.broker.keys.cron_next, cron.name))
            assert score == cron.next_ms, f"cron {cron.name}: next fire {score}, model {cron.next_ms}"


class NestedWorkflowMachine(BrokerMachine):
    """The same machine with nested workflows among its operations (its own test, so that the
    interleavings of the machine above stay what they were)."""

    @rule(target=BrokerMachine.jobs, shape=st.sampled_from(NESTED_SHAPES), max_attempts=st.integers(1, 2),
          dead_letter=st.booleans())
    def enqueue_nested_workflow(self, shape: Shape, max_attempts: int, dead_letter: bool) -> Any:
        """Chains, groups and batches inside each other: one graph, flattened here independently
        of the broker's planner (request order, depth first, a batch's callbacks after its jobs)."""
        def step() -> dict[str, Any]:
            return self._new("wf.step", max_attempts=max_attempts, dead_letter=dead_letter, delay_ms=None)

        def callback() -> dict[str, Any]:
            return self._new("wf.callback", max_attempts=1, dead_letter=dead_letter, delay_ms=None)

        view = self.run(Workflows(self.broker).create(WorkflowRequest(**nested_request(shape, step, callback))))
        raw = self.run(self.broker.redis.hgetall(self.broker.keys.workflow(view["id"])))
        members = [raw[f"j{i}".encode()].decode() for i in range(int(raw[b"members"]))]
        graph: list[tuple[list[int], str | None, bool]] = []
        nested_graph(shape, [], 0, graph)
        assert len(graph) == len(members), f"{len(members)} members, the model's graph has {len(graph)}"
        for i, (deps, cond, awaited) in enumerate(graph):
            self.model.add(Job(members[i], "waiting" if deps else "available", max_attempts if cond is None else 1,
                               dead_letter, workflow=view["id"], index=i, cond=cond, awaited=awaited,
                               pending=len(deps)))
        plain = sum(1 for _, cond, _ in graph if cond is None)
        awaited_callbacks = sum(1 for _, _, awaited in graph if awaited)
        self.model.workflows[view["id"]] = Workflow(view["id"], shape[0], members, [g[0] for g in graph], plain,
                                                    open=plain + awaited_callbacks)
        return multiple(*members)


# --- the test --------------------------------------------------------------------------------


def _run_machine(machine: type[BrokerMachine], broker: Broker, run: Run[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a lifecycle machine on the model's clock and ids, against a broker of its own."""
    clock = Clock()
    monkeypatch.setattr(timefmt, "now_ms", clock)
    ids = Ids()
    for module in (records_module, workflows_module, crons_module):
        monkeypatch.setattr(module, "uuid7", ids)
    # The outage guard measures the gap between scheduler steps on Redis' own clock, which this
    # test does not control: a stall of a loaded test machine between two steps would read as a
    # Redis outage and defer lease expiry behind the model's back (tests/test_reaper_outage.py
    # covers the guard). Only a gap of an hour counts here.
    settings = msgspec.structs.replace(broker.settings, reaper_outage_gap_ms=3_600_000)
    model_broker = Broker(broker.redis, settings)
    try:
        machine.env = Env(model_broker, run, clock, ids)
        run_state_machine_as_test(machine, settings=MODEL_SETTINGS)
    finally:
        run(model_broker.close())


def test_broker_follows_the_lifecycle_model(
    broker: Broker, run: Run[Any], monkeypatch: pytest.MonkeyPatch, allow_inconsistency: None
) -> None:
    _run_machine(BrokerMachine, broker, run, monkeypatch)
