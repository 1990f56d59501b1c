"""The test context: what every mode shares (assertions, time control, failure injection), the
stack of active contexts, and the redirect of :class:`runtime.client.Client` while one is active.

A context is entered explicitly (``with fake_mode():``, a pytest fixture) and never from the
environment. While it is active, every ``Client()`` made in this process, by the test or by the
code under test, is bound to it: in fake and inline mode to its in-memory store, in real mode
to its own key prefix on the given Redis. Leaving the context restores ``Client`` and the
clock exactly as they were; contexts nest (the innermost one is current).
"""

from __future__ import annotations

import abc
import asyncio
import collections
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from runtime import default_client, timefmt
from runtime.broker.workflows import WorkflowRequest, plan
from runtime.client import Client
from runtime.config import Settings
from runtime.testing import matching
from runtime.testing.clock import DurationLike, TestClock, TimeLike
from runtime.testing.matching import ANY
from runtime.testing.running import FailureInjection, JobRunner

FAILED_OUTCOMES = frozenset({"retried", "failed", "dead_lettered"})


class DrainSummary(msgspec.Struct, kw_only=True):
    """What one ``drain`` ran: the number of executions per outcome (completed, retried, failed,
    dead_lettered, cancelled) and each execution, in the order they ran."""

    counts: dict[str, int]
    jobs: list[dict[str, Any]]
    timed_out: bool = False  # stopped at its timeout: jobs may be left to run


def summary_of(executions: Sequence[dict[str, Any]], *, timed_out: bool = False) -> DrainSummary:
    counts = collections.Counter(run["outcome"] for run in executions)
    return DrainSummary(counts=dict(counts), jobs=list(executions), timed_out=timed_out)


def execution_record(job: Mapping[str, Any], outcome: str, *, result: Any = None,
                     error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One execution of a job, as the execution assertions match it."""
    return {
        "id": job.get("id"), "type": job.get("type"), "queue": job.get("queue"), "args": job.get("args"),
        "meta": job.get("meta") or {}, "attempt": job.get("attempt"), "outcome": outcome,
        "result": result, "error": dict(error) if error is not None else None,
    }


class TestContext(abc.ABC):
    """One test's jobs, executions, clock and injected failures."""

    __test__ = False  # not a pytest test class
    mode: str  # fake, inline or real

    def __init__(self) -> None:
        self.clock = TestClock()
        self.injection = FailureInjection()
        self.runner = JobRunner(self.injection)
        self.executions: list[dict[str, Any]] = []
        self.workflows: list[dict[str, Any]] = []

    # --- entering and leaving ----------------------------------------------------------------

    def __enter__(self) -> Self:
        _push(self)
        # Task handles (`send_email.enqueue(...)`) enqueue through this context too, whatever
        # default client they made before it began.
        self._handles = _HandleClients()
        self._using_handles = default_client.using_client(self._handles)
        self._using_handles.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            self._using_handles.__exit__(None, None, None)
            self._handles.close()
            _pop(self)

    def close(self) -> None:
        self.runner.close()

    @abc.abstractmethod
    def bind_client(self, client: Client, init: Callable[..., None], settings: Settings | None,
                    middleware: Sequence[Any], **options: Any) -> None:
        """Initialise a ``Client`` made while this context is current so it talks to it (any
        other option of ``Client`` is passed on as given)."""

    # --- what the mode provides --------------------------------------------------------------

    @abc.abstractmethod
    def jobs(self) -> list[dict[str, Any]]:
        """Every job of this context, as OJS envelopes, oldest first."""

    @abc.abstractmethod
    def job(self, job_id: str) -> dict[str, Any]:
        """One job's envelope (AssertionError if this context has no such job)."""

    @abc.abstractmethod
    def event_log(self) -> list[dict[str, Any]]:
        """Every lifecycle event of this context, oldest first."""

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """The lifecycle events (``job.enqueued``, ``job.started``, ``job.completed``, ...), each
        ``{"type", "subject", "time" (epoch ms), "data"}``, optionally of one type."""
        return [e for e in self.event_log() if type is None or e["type"] == type]

    @abc.abstractmethod
    async def drain(self, queue: str | None = None, *, max_jobs: int | None = None, timeout_s: float = 30.0,
                    with_scheduled: bool = False) -> DrainSummary:
        """Run what is due, including what those jobs enqueue, until nothing is."""

    def clear_all(self) -> None:
        """Forget every job, execution, workflow and injected failure of this context."""
        self.executions.clear()
        self.workflows.clear()
        self.injection.clear()

    def client(self, **kwargs: Any) -> Client:
        """A client bound to this context (any ``Client()`` made while it is current is)."""
        return Client(**kwargs)

    # --- enqueue assertions ------------------------------------------------------------------

    def all_enqueued(self, type: str | None = None, *, queue: str | None = None, args: Any = ANY,
                     meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return matching.select(self.jobs(), type, queue=queue, args=args, meta=meta)

    def assert_enqueued(self, type: str, *, args: Any = ANY, queue: str | None = None,
                        meta: Mapping[str, Any] | None = None, count: int | None = None) -> list[dict[str, Any]]:
        """At least one job (exactly `count`, when given) of `type` matching the criteria was
        enqueued in this test; returns them."""
        return matching.expect("enqueued", self.jobs(), type, count=count, args=args, queue=queue, meta=meta)

    def refute_enqueued(self, type: str, *, args: Any = ANY, queue: str | None = None,
                        meta: Mapping[str, Any] | None = None) -> None:
        matching.refute("enqueued", self.jobs(), type, args=args, queue=queue, meta=meta)

    # --- execution assertions ----------------------------------------------------------------

    def performed(self, type: str | None = None) -> list[dict[str, Any]]:
        """The executions of this test (one per attempt), optionally of one type."""
        return matching.select(self.executions, type)

    def assert_performed(self, type: str, *, args: Any = ANY, queue: str | None = None,
                         meta: Mapping[str, Any] | None = None, count: int | None = None) -> list[dict[str, Any]]:
        return matching.expect("performed", self.executions, type, count=count, args=args, queue=queue, meta=meta)

    def refute_performed(self, type: str, *, args: Any = ANY, queue: str | None = None) -> None:
        matching.refute("performed", self.executions, type, args=args, queue=queue)

    def assert_completed(self, type: str, *, args: Any = ANY, queue: str | None = None,
                         meta: Mapping[str, Any] | None = None, count: int | None = None) -> list[dict[str, Any]]:
        done = [run for run in self.executions if run["outcome"] == "completed"]
        return matching.expect("completed", done, type, count=count, args=args, queue=queue, meta=meta)

    def refute_completed(self, type: str, *, args: Any = ANY, queue: str | None = None) -> None:
        done = [run for run in self.executions if run["outcome"] == "completed"]
        matching.refute("completed", done, type, args=args, queue=queue)

    def assert_failed(self, type: str, *, args: Any = ANY, queue: str | None = None,
                      meta: Mapping[str, Any] | None = None, count: int | None = None) -> list[dict[str, Any]]:
        """An execution of `type` failed: the job went to ``retryable`` or ``discarded``."""
        failed = [run for run in self.executions if run["outcome"] in FAILED_OUTCOMES]
        return matching.expect("failed", failed, type, count=count, args=args, queue=queue, meta=meta)

    # --- state and workflow assertions -------------------------------------------------------

    def assert_job_state(self, job_id: str, state: str) -> dict[str, Any]:
        job = self.job(job_id)
        if job.get("state") != state:
            error = job.get("error")
            why = f" (last error: {error.get('type')}: {error.get('message')})" if isinstance(error, dict) else ""
            raise AssertionError(f"job {job_id} ({job.get('type')}) is {job.get('state')!r}, expected {state!r}{why}")
        return job

    def assert_workflow_created(self, type: str, *, name: str | None = None, step_count: int | None = None,
                                step_types: Sequence[str] | None = None) -> dict[str, Any]:
        """A workflow of `type` (chain, group, batch or dag) was created in this test."""
        problems = []
        for flow in self.workflows:
            why = []
            if flow["type"] != type:
                why.append(f"type {flow['type']!r} != {type!r}")
            if name is not None and flow["name"] != name:
                why.append(f"name {flow['name']!r} != {name!r}")
            if step_count is not None and flow["step_count"] != step_count:
                why.append(f"step_count {flow['step_count']} != {step_count}")
            if step_types is not None and flow["step_types"] != list(step_types):
                why.append(f"step_types {flow['step_types']} != {list(step_types)}")
            if not why:
                return flow
            problems.append(f"  workflow {flow['id']}: {'; '.join(why)}")
        lines = [f"expected a {type!r} workflow, found none matching"] + (problems or ["  (no workflows in this test)"])
        raise AssertionError("\n".join(lines))

    def record_workflow(self, req: WorkflowRequest, created: Mapping[str, Any]) -> None:
        kind, members, total = plan(req, timefmt.now_ms())
        self.workflows.append({
            "id": created.get("id"), "type": kind, "name": req.name or kind, "step_count": total,
            "step_types": [m.job.fields["type"] for m in members if m.condition is None],  # nested too
        })

    # --- time control and failure injection --------------------------------------------------

    def freeze_time(self, when: TimeLike | None = None) -> int:
        """Stop this process' clock at `when` (RFC 3339, epoch ms or an aware datetime; default
        now); returns it in epoch ms."""
        return self.clock.freeze(when)

    def advance_time(self, by: DurationLike) -> int:
        """Move the clock forward (``"PT10M"``, ``"90s"``, a timedelta, or seconds): scheduled
        jobs, retries and cron ticks that fall due run at the next ``drain``."""
        return self.clock.advance(by)

    def fail_next(self, type: str, error: BaseException | type[BaseException] | str) -> None:
        """The next execution of `type` raises `error` instead of running its handler (each call
        queues one more)."""
        self.injection.fail_next(type, error)

    def fail_all(self, type: str, error: BaseException | type[BaseException] | str | None) -> None:
        """Every execution of `type` raises `error`, until ``fail_all(type, None)``."""
        self.injection.fail_all(type, error)


# --- the active contexts and the Client redirect ---------------------------------------------

_ACTIVE: list[TestContext] = []
_REAL_INIT: Callable[..., None] | None = None


def current() -> TestContext:
    if not _ACTIVE:
        raise RuntimeError(
            "no testing mode is active: enter one explicitly (`with runtime.testing.fake_mode():`, "
            "or the ojs_fake / ojs_inline / ojs_real pytest fixtures)"
        )
    return _ACTIVE[-1]


class _HandleClients:
    """What task handles enqueue through while a test context is current: a ``Client`` made in
    that context (so bound to it), one per event loop, as a default client would be."""

    def __init__(self) -> None:
        self._per_loop: dict[asyncio.AbstractEventLoop, Client] = {}

    async def enqueue_job(self, type: str, args: list[Any], **options: Any) -> Any:
        loop = asyncio.get_running_loop()
        client = self._per_loop.get(loop)
        if client is None:
            client = self._per_loop[loop] = Client()
        return await client.enqueue_job(type, args, **options)

    def close(self) -> None:
        """Close the clients whose loops can still run a close; the rest went with their loop."""
        for loop, client in self._per_loop.items():
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.close())
        self._per_loop.clear()


def _bound_init(client: Client, redis_url: str | None = None, *, settings: Settings | None = None,
                middleware: Sequence[Any] = (), **options: Any) -> None:
    # The caller's redis_url is ignored on purpose: the test context decides where jobs go.
    assert _REAL_INIT is not None
    current().bind_client(client, _REAL_INIT, settings, middleware, **options)


def _push(context: TestContext) -> None:
    global _REAL_INIT
    if not _ACTIVE:
        _REAL_INIT = Client.__init__
        Client.__init__ = _bound_init  # type: ignore[method-assign,assignment]
    _ACTIVE.append(context)


def _pop(context: TestContext) -> None:
    global _REAL_INIT
    if context in _ACTIVE:
        _ACTIVE.remove(context)
    outer = _ACTIVE[-1] if _ACTIVE else None
    timefmt.use_clock(outer.clock.now_ms if outer is not None and outer.clock.frozen else None)
    if outer is None and _REAL_INIT is not None:
        Client.__init__ = _REAL_INIT  # type: ignore[method-assign]
        _REAL_INIT = None


def redirect(client: Client, broker: Any, workflows: Any) -> None:
    """Point a freshly initialised client at another broker and workflow service. These two are
    the client's only way to the store; if they move, this fails loudly rather than letting a
    test's jobs reach a real Redis."""
    for name in ("_broker", "_workflows"):
        if not hasattr(client, name):
            raise RuntimeError(f"runtime.testing cannot redirect Client: it has no {name} any more")
    client._broker = broker  # noqa: SLF001
    client._workflows = workflows  # noqa: SLF001
