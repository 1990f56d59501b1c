"""One job through the executor: every way a handler can end becomes an Outcome, and settle()
turns it into the right ack/nack item. No Redis: progress goes to an in-memory sink."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest

from runtime import timefmt
from runtime.broker.core import Completion, Failure
from runtime.context import CANCELLED, SHUTDOWN, Job, JobContext, ProgressThrottle, ProgressUpdate
from runtime.errors import Discard, Retry
from runtime.executor import (
    Cancelled,
    Completed,
    Discarded,
    Failed,
    JobTimeout,
    Outcome,
    Released,
    RetryLater,
    Stuck,
    Terminal,
    execute,
    settle,
)
from runtime.handlers import HandlerSpec, Registry
from runtime.middleware import CallNext, compose


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def registry(fns: dict[str, Callable[..., Any]], middleware: tuple[Any, ...] = (), **opts: Any) -> Registry:
    specs = {
        name: HandlerSpec(job_type=name, fn=fn, is_async=inspect.iscoroutinefunction(fn), **opts)
        for name, fn in fns.items()
    }
    return Registry(module="test", handlers=specs, middleware=middleware)


def make_ctx(job_type: str, *args: Any, timeout_s: float | None = None, **fields: Any) -> JobContext:
    job = msgspec.convert({"id": "job-1", "type": job_type, "queue": "q", "args": list(args), **fields}, Job)
    return JobContext(job, worker_id="w1", timeout_s=timeout_s)


def run_job(reg: Registry, ctx: JobContext, threads: ThreadPoolExecutor, *, grace_s: float = 1.0) -> Outcome:
    chain = compose(reg.middleware, Terminal(reg, threads=threads, grace_s=grace_s))
    return asyncio.run(execute(ctx, chain, reg.handlers))


def test_execute_async_handler_gets_args_positionally_and_completes(threads: ThreadPoolExecutor) -> None:
    async def send(ctx: JobContext, to: str, subject: str) -> dict[str, Any]:
        return {"to": to, "subject": subject, "attempt": ctx.attempt}

    outcome = run_job(registry({"email.send": send}), make_ctx("email.send", "a@b.c", "hi", attempt=2), threads)
    assert outcome == Completed(b'{"to":"a@b.c","subject":"hi","attempt":2}')


def test_execute_sync_handler_runs_off_the_event_loop_thread(threads: ThreadPoolExecutor) -> None:
    def build(ctx: JobContext, day: str) -> str:
        return threading.current_thread().name

    outcome = run_job(registry({"report.build": build}), make_ctx("report.build", "2024-01-01"), threads)
    assert isinstance(outcome, Completed)
    assert outcome.result != msgspec.json.encode(threading.main_thread().name)


def test_execute_none_result_completes_without_a_result(threads: ThreadPoolExecutor) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    assert run_job(registry({"t.noop": noop}), make_ctx("t.noop"), threads) == Completed(b"")


def test_execute_exception_becomes_a_failure_with_type_message_and_traceback(threads: ThreadPoolExecutor) -> None:
    async def broken(ctx: JobContext) -> None:
        raise LookupError("no such user")

    outcome = run_job(registry({"t.broken": broken}), make_ctx("t.broken"), threads)
    assert isinstance(outcome, Failed)
    assert (outcome.error.type, outcome.error.message, outcome.error.code) == ("LookupError", "no such user", "handler_error")
    assert any("in broken" in frame for frame in outcome.error.backtrace or [])
    item = settle(outcome, make_ctx("t.broken", attempt=1), worker_id="w1", now_ms=1_000)
    assert isinstance(item, Failure)
    assert (item.verdict, item.worker_id, item.attempt) == ("retry", "w1", 1)
    assert msgspec.json.decode(item.error)["type"] == "LookupError"


def test_settle_respects_the_policys_non_retryable_errors(threads: ThreadPoolExecutor) -> None:
    async def broken(ctx: JobContext) -> None:
        raise PermissionError("denied")

    ctx = make_ctx("t.broken", retry={"non_retryable_errors": ["PermissionError"]})
    item = settle(run_job(registry({"t.broken": broken}), ctx, threads), ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "nonretryable"


def test_execute_retry_asks_for_a_retry_with_its_delay(threads: ThreadPoolExecutor) -> None:
    async def later(ctx: JobContext) -> None:
        raise Retry("rate limited", delay_s=2.5)

    ctx = make_ctx("t.later")
    outcome = run_job(registry({"t.later": later}), ctx, threads)
    assert isinstance(outcome, RetryLater) and outcome.delay_ms == 2500
    item = settle(outcome, ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "retry"


def test_a_retry_that_pauses_the_rate_limit_key_carries_until_when(threads: ThreadPoolExecutor) -> None:
    async def throttled(ctx: JobContext) -> None:
        raise Retry("429 from the API", key_paused_s=30)

    ctx = make_ctx("t.throttled")
    before = timefmt.now_ms()
    outcome = run_job(registry({"t.throttled": throttled}), ctx, threads)
    assert isinstance(outcome, RetryLater) and outcome.delay_ms == 30_000
    assert outcome.error.rate_limit_until is not None
    assert timefmt.parse_timestamp_ms(outcome.error.rate_limit_until) >= before + 30_000
    item = settle(outcome, ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and b'"rate_limit_until_ms"' in item.error


@pytest.mark.parametrize("seconds", [1e12, float("inf"), float("nan"), -5.0])
def test_any_retry_delay_or_key_pause_still_settles_the_job(threads: ThreadPoolExecutor, seconds: float) -> None:
    async def throttled(ctx: JobContext) -> None:
        raise Retry("429", delay_s=seconds, key_paused_s=seconds)

    ctx = make_ctx("t.throttled")
    outcome = run_job(registry({"t.throttled": throttled}), ctx, threads)
    assert isinstance(outcome, RetryLater) and 0 <= (outcome.delay_ms or 0) <= 365 * 86_400_000
    item = settle(outcome, ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "retry"


def test_execute_discard_discards_without_retry(threads: ThreadPoolExecutor) -> None:
    def drop(ctx: JobContext) -> None:
        raise Discard("stale")

    ctx = make_ctx("t.drop")
    outcome = run_job(registry({"t.drop": drop}), ctx, threads)
    assert isinstance(outcome, Discarded) and outcome.error.message == "stale"
    item = settle(outcome, ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "discard"


def test_execute_unknown_type_fails_without_retry(threads: ThreadPoolExecutor) -> None:
    ctx = make_ctx("t.nobody")
    outcome = run_job(registry({}), ctx, threads)
    assert isinstance(outcome, Failed) and outcome.error.type == "UnknownJobType"
    item = settle(outcome, ctx, worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "nonretryable"


def test_execute_unserializable_result_fails(threads: ThreadPoolExecutor) -> None:
    async def odd(ctx: JobContext) -> object:
        return object()

    outcome = run_job(registry({"t.odd": odd}), make_ctx("t.odd"), threads)
    assert isinstance(outcome, Failed) and outcome.error.type == "ResultNotSerializable"


def test_execute_async_timeout_cancels_the_handler_and_fails_with_timeout(threads: ThreadPoolExecutor) -> None:
    seen: list[str] = []

    async def slow(ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def watch(ctx: JobContext, call_next: CallNext) -> Any:
        try:
            return await call_next()
        except JobTimeout:
            seen.append("middleware saw the timeout")
            raise

    outcome = run_job(registry({"t.slow": slow}, (watch,)), make_ctx("t.slow", timeout_s=0.05), threads)
    assert isinstance(outcome, Failed)
    assert (outcome.error.type, outcome.error.code, outcome.error.retryable) == ("timeout", "timeout", True)
    assert seen == ["cancelled", "middleware saw the timeout"]


def test_execute_handler_raising_its_own_timeout_error_is_a_plain_failure(threads: ThreadPoolExecutor) -> None:
    async def flaky(ctx: JobContext) -> None:
        raise TimeoutError("upstream timed out")

    outcome = run_job(registry({"t.flaky": flaky}), make_ctx("t.flaky", timeout_s=10), threads)
    assert isinstance(outcome, Failed) and outcome.error.type == "TimeoutError"


def test_execute_sync_handler_that_stops_when_asked_fails_with_timeout(threads: ThreadPoolExecutor) -> None:
    def polite(ctx: JobContext) -> str:
        while not ctx.cancelled:
            time.sleep(0.005)
        return "stopped"

    outcome = run_job(registry({"t.polite": polite}), make_ctx("t.polite", timeout_s=0.05), threads, grace_s=5)
    assert isinstance(outcome, Failed) and outcome.error.type == "timeout"


def test_execute_sync_handler_that_ignores_its_timeout_is_stuck(threads: ThreadPoolExecutor) -> None:
    release = threading.Event()

    def stubborn(ctx: JobContext) -> None:
        release.wait(10)

    try:
        outcome = run_job(registry({"t.stubborn": stubborn}), make_ctx("t.stubborn", timeout_s=0.05), threads,
                          grace_s=0.05)
    finally:
        release.set()
    assert isinstance(outcome, Stuck) and outcome.error.type == "timeout"
    item = settle(outcome, make_ctx("t.stubborn"), worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and item.verdict == "retry"


def test_a_stuck_handler_is_stuck_whatever_middleware_makes_of_its_timeout(threads: ThreadPoolExecutor) -> None:
    release = threading.Event()

    def stubborn(ctx: JobContext) -> None:
        release.wait(10)

    async def retry_on_timeouts(ctx: JobContext, call_next: Any) -> Any:
        try:
            return await call_next()
        except TimeoutError:
            raise Retry(delay_s=0.1) from None  # its own quick retry: the thread still runs

    async def fallback_on_timeouts(ctx: JobContext, call_next: Any) -> Any:
        try:
            return await call_next()
        except TimeoutError:
            return {"fallback": True}  # done, as far as the middleware is concerned

    try:
        ctx = make_ctx("t.stubborn", timeout_s=0.05)
        retried = run_job(registry({"t.stubborn": stubborn}, middleware=(retry_on_timeouts,)), ctx, threads,
                          grace_s=0.05)
        fallback_ctx = make_ctx("t.stubborn", timeout_s=0.05)
        fallback = run_job(registry({"t.stubborn": stubborn}, middleware=(fallback_on_timeouts,)), fallback_ctx,
                           threads, grace_s=0.05)
    finally:
        release.set()
    # A retry of the middleware's own waits for the process (Stuck: the floor under its delay)
    assert isinstance(retried, Stuck) and retried.error.type == "Retry"
    # A result of the middleware's own stands: the job is done, not run again
    assert fallback == Completed(b'{"fallback":true}')
    # and either way the pool learns that a thread runs on (it is replaced)
    assert ctx.stuck_after_s == fallback_ctx.stuck_after_s == 0.05


def test_execute_cancelled_job_reports_nothing(threads: ThreadPoolExecutor) -> None:
    async def scenario() -> Outcome:
        async def slow(ctx: JobContext) -> None:
            await asyncio.sleep(30)

        reg = registry({"t.slow": slow})
        ctx = make_ctx("t.slow")
        task = asyncio.create_task(execute(ctx, compose((), Terminal(reg, threads=threads, grace_s=1)), reg.handlers))
        await asyncio.sleep(0)
        ctx.request_stop(CANCELLED)
        task.cancel()
        return await task

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, Cancelled)
    assert settle(outcome, make_ctx("t.slow"), worker_id="w1", now_ms=1) is None


def test_execute_shutdown_releases_the_job_without_spending_the_attempt(threads: ThreadPoolExecutor) -> None:
    async def scenario() -> Outcome:
        def slow(ctx: JobContext) -> None:
            while not ctx.cancelled:
                time.sleep(0.005)

        reg = registry({"t.slow": slow})
        ctx = make_ctx("t.slow")
        task = asyncio.create_task(execute(ctx, compose((), Terminal(reg, threads=threads, grace_s=1)), reg.handlers))
        await asyncio.sleep(0.01)
        ctx.request_stop(SHUTDOWN)
        task.cancel()
        return await task

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, Released)
    item = settle(outcome, make_ctx("t.slow", attempt=3), worker_id="w1", now_ms=1)
    assert isinstance(item, Failure) and (item.verdict, item.attempt) == ("release", 3)


def test_settle_completion_carries_the_claim(threads: ThreadPoolExecutor) -> None:
    item = settle(Completed(b"1"), make_ctx("t.x", attempt=4), worker_id="w9", now_ms=1)
    assert item == Completion(job_id="job-1", result=b"1", worker_id="w9", attempt=4)


def test_execute_middleware_wraps_retry_and_discard_which_propagate(threads: ThreadPoolExecutor) -> None:
    trace: list[str] = []

    async def mw(ctx: JobContext, call_next: CallNext) -> Any:
        trace.append("before")
        try:
            return await call_next()
        except (Retry, Discard) as err:
            trace.append(type(err).__name__)
            raise

    async def later(ctx: JobContext) -> None:
        raise Retry()

    async def drop(ctx: JobContext) -> None:
        raise Discard()

    reg = registry({"t.later": later, "t.drop": drop}, (mw,))
    assert isinstance(run_job(reg, make_ctx("t.later"), threads), RetryLater)
    assert isinstance(run_job(reg, make_ctx("t.drop"), threads), Discarded)
    assert trace == ["before", "Retry", "before", "Discard"]


def test_execute_handler_concurrency_limit_serialises_jobs_of_a_type(threads: ThreadPoolExecutor) -> None:
    running = 0
    peak = 0

    async def limited(ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    async def scenario() -> None:
        reg = registry({"t.limited": limited}, concurrency=2)
        chain = compose((), Terminal(reg, threads=threads, grace_s=1))
        await asyncio.gather(*(execute(make_ctx("t.limited"), chain, reg.handlers) for _ in range(6)))

    asyncio.run(scenario())
    assert peak == 2


def test_progress_is_throttled_keeps_the_latest_value_and_flushes_at_the_end() -> None:
    writes: list[ProgressUpdate] = []

    async def sink(job_id: str, update: ProgressUpdate) -> None:
        writes.append(update)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ctx = JobContext(make_ctx("t.x").job, progress=ProgressThrottle("job-1", sink=sink, interval_s=60), loop=loop)
        for step in range(1, 101):
            await ctx.progress(step, f"step {step}", percent=True)
        await asyncio.sleep(0)  # let the first write run
        assert len(writes) == 1
        await ctx.flush_progress()

    asyncio.run(scenario())
    assert [(w.value, w.message) for w in writes] == [(0.01, "step 1"), (1.0, "step 100")]


def test_progress_from_a_sync_handler_thread_reaches_the_sink(threads: ThreadPoolExecutor) -> None:
    writes: list[ProgressUpdate] = []

    async def sink(job_id: str, update: ProgressUpdate) -> None:
        writes.append(update)

    def work(ctx: JobContext) -> None:
        ctx.set_progress(0.25, data={"rows": 10})
        ctx.set_progress(5.0)  # clamped to 1.0

    async def scenario() -> None:
        reg = registry({"t.work": work})
        loop = asyncio.get_running_loop()
        ctx = JobContext(make_ctx("t.work").job, progress=ProgressThrottle("job-1", sink=sink, interval_s=60), loop=loop)
        await execute(ctx, compose((), Terminal(reg, threads=threads, grace_s=1)), reg.handlers)
        await ctx.flush_progress()

    asyncio.run(scenario())
    assert [(w.value, w.data) for w in writes] == [(0.25, b'{"rows":10}'), (1.0, None)]
