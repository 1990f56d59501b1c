"""Testing kit: fake, inline and real mode, assertions, drain, time control, failure injection.

Pick the mode explicitly, per test: a pytest fixture (``ojs_fake``, ``ojs_inline``, ``ojs_real``,
from the plugin this package registers with pytest) or a context manager::

    from runtime import Client, testing

    def test_signup_sends_the_welcome_email():
        with testing.fake_mode() as ojs:
            asyncio.run(signup("ada@example.com"))          # calls Client().enqueue(...)
            ojs.assert_enqueued("email.send", args=["ada@example.com", "Welcome"], queue="email")

While a mode is active, every ``Client()`` of the process (the test's and the code under
test's) is bound to the test's own context; leaving the mode restores ``Client`` and the clock.
A client made before the mode was entered (at import time, say) keeps its real store: make
clients where they are used. Nothing is read from the environment to choose a mode.

Modes
-----
``fake_mode()``
    No Redis. Enqueues are validated exactly as the broker validates them (the same decoder)
    and recorded with their full envelope and a UUIDv7 id; nothing runs until ``await
    ojs.drain()``, which runs the due jobs in this process through the execution middleware
    and the retry policy.
``inline_mode(raise_failures=True)``
    No Redis. Each enqueue runs its job before returning, through the execution middleware;
    a failed attempt is retried at once while its retry policy allows, and a job that fails
    for good raises :class:`JobFailed` to the caller of ``enqueue``.
``real_mode(redis_url=None)``
    A real Redis (an embedded one started for the process when no URL is given), the real
    broker scripts, and a key prefix of the test's own, deleted afterwards. ``await
    ojs.drain()`` is an embedded worker: it promotes due jobs, fires due cron ticks, and runs
    every job it can claim, including those the jobs enqueue, until none is left.

How the modes differ from production (``ojs-run`` pools on Redis)
-----------------------------------------------------------------
=====================  ====================  ==========================  ========================
                       fake                  inline                      real
=====================  ====================  ==========================  ========================
validation             the broker's          the broker's                the broker's
enqueue middleware     runs                  runs                        runs
execution middleware   at ``drain``          runs                        at ``drain``
handler runs           at ``drain``, here    in ``enqueue``, here        at ``drain``, here
retries                policy, by ``drain``  policy, at once (no wait)   policy (nack.lua)
backoff jitter         none                  none                        as configured
scheduled jobs         by the test clock     run at once (delay ignored) by the test clock
cron                   not run               not run                     ticks by the test clock
unique jobs            in memory             in memory                   Redis (period: Redis'
                                                                         own clock)
workflows              recorded; first       recorded; first steps run   orchestrated
                       steps enqueued
concurrency limits,    not applied           not applied                 applied to the fetch;
rate limits, leases                                                      one job at a time
progress, checkpoints  recorded              recorded                    recorded
lifecycle events       in memory, the same   in memory, the same         the events stream
                       types                 types
=====================  ====================  ==========================  ========================

In every mode the jobs run one at a time in the test's process, and a sync handler runs in a
thread of its own pool. Time control moves :func:`runtime.timefmt.now_ms` for the whole
process; it does not move Redis' clock (key expiry) or ``asyncio.sleep`` inside handlers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runtime.testing.clock import DurationLike, TimeLike
from runtime.testing.kit import DrainSummary, TestContext, current
from runtime.testing.matching import ANY
from runtime.testing.memory import JobFailed, MemoryContext
from runtime.testing.real import RealContext, unique_prefix

__all__ = [
    "ANY",
    "DrainSummary",
    "JobFailed",
    "MemoryContext",
    "RealContext",
    "TestContext",
    "advance_time",
    "all_enqueued",
    "assert_completed",
    "assert_enqueued",
    "assert_failed",
    "assert_job_state",
    "assert_performed",
    "assert_workflow_created",
    "clear_all",
    "current",
    "drain",
    "fail_all",
    "fail_next",
    "fake_mode",
    "freeze_time",
    "inline_mode",
    "real_mode",
    "refute_completed",
    "refute_enqueued",
    "refute_performed",
    "unique_prefix",
]


@contextmanager
def fake_mode() -> Iterator[MemoryContext]:
    with MemoryContext() as context:
        yield context


@contextmanager
def inline_mode(*, raise_failures: bool = True) -> Iterator[MemoryContext]:
    with MemoryContext(inline=True, raise_failures=raise_failures) as context:
        yield context


@contextmanager
def real_mode(redis_url: str | None = None, *, key_prefix: str | None = None) -> Iterator[RealContext]:
    with RealContext(redis_url, key_prefix=key_prefix) as context:
        yield context


# The same helpers on the current context, for tests that prefer plain functions.

def all_enqueued(type: str | None = None, *, queue: str | None = None, args: Any = ANY,
                 meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    return current().all_enqueued(type, queue=queue, args=args, meta=meta)


def assert_enqueued(type: str, *, args: Any = ANY, queue: str | None = None, meta: Mapping[str, Any] | None = None,
                    count: int | None = None) -> list[dict[str, Any]]:
    return current().assert_enqueued(type, args=args, queue=queue, meta=meta, count=count)


def refute_enqueued(type: str, *, args: Any = ANY, queue: str | None = None,
                    meta: Mapping[str, Any] | None = None) -> None:
    current().refute_enqueued(type, args=args, queue=queue, meta=meta)


def clear_all() -> None:
    current().clear_all()


def assert_performed(type: str, *, args: Any = ANY, queue: str | None = None, meta: Mapping[str, Any] | None = None,
                     count: int | None = None) -> list[dict[str, Any]]:
    return current().assert_performed(type, args=args, queue=queue, meta=meta, count=count)


def refute_performed(type: str, *, args: Any = ANY, queue: str | None = None) -> None:
    current().refute_performed(type, args=args, queue=queue)


def assert_completed(type: str, *, args: Any = ANY, queue: str | None = None, meta: Mapping[str, Any] | None = None,
                     count: int | None = None) -> list[dict[str, Any]]:
    return current().assert_completed(type, args=args, queue=queue, meta=meta, count=count)


def refute_completed(type: str, *, args: Any = ANY, queue: str | None = None) -> None:
    current().refute_completed(type, args=args, queue=queue)


def assert_failed(type: str, *, args: Any = ANY, queue: str | None = None, meta: Mapping[str, Any] | None = None,
                  count: int | None = None) -> list[dict[str, Any]]:
    return current().assert_failed(type, args=args, queue=queue, meta=meta, count=count)


def assert_job_state(job_id: str, state: str) -> dict[str, Any]:
    return current().assert_job_state(job_id, state)


def assert_workflow_created(type: str, **criteria: Any) -> dict[str, Any]:
    return current().assert_workflow_created(type, **criteria)


async def drain(queue: str | None = None, **options: Any) -> DrainSummary:
    return await current().drain(queue, **options)


def freeze_time(when: TimeLike | None = None) -> int:
    return current().freeze_time(when)


def advance_time(by: DurationLike) -> int:
    return current().advance_time(by)


def fail_next(type: str, error: BaseException | type[BaseException] | str) -> None:
    current().fail_next(type, error)


def fail_all(type: str, error: BaseException | type[BaseException] | str | None) -> None:
    current().fail_all(type, error)
