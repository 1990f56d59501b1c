"""One job: JobContext -> middleware chain -> handler under its timeout -> an Outcome value.

The executor never talks to the broker. It returns what happened, and :func:`settle` turns that
into the one ack or nack item the pool sends (or nothing, for a job that was cancelled); once
that is answered, :func:`observe` records the attempt's metrics. The chain runs inside the job's
trace context (:func:`runtime.tracing.job_span`).

Timeouts. The job's ``timeout_ms`` (else the handler's ``timeout_s``) bounds the handler call,
innermost in the chain, so middleware sees the :class:`JobTimeout` raised by ``call_next``:

* an async handler is cancelled (``asyncio.timeout``) and the job fails with a timeout error;
* a sync handler cannot be interrupted: it is asked to stop (``ctx.cancelled`` turns true) and
  given ``grace_s`` more. If it returns, the job fails with a timeout error. If not, the outcome
  is :class:`Stuck`: the job fails with the same timeout error, and the pool process must be
  replaced because one of its threads will not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
import traceback
from collections.abc import Awaitable, Callable, Container
from concurrent.futures import Executor
from typing import Any

import msgspec

from runtime import metrics, timefmt, tracing
from runtime.binding import ArgumentCheck, InvalidArguments
from runtime.broker import failures
from runtime.broker.core import Completion, Failure, NackResult
from runtime.context import CANCELLED, SHUTDOWN, TIMEOUT, Job, JobContext
from runtime.envelope import ErrorInfo
from runtime.errors import Discard, Retry
from runtime.handlers import HandlerSpec, Registry

MAX_MESSAGE_CHARS = 10_000


class Completed(msgspec.Struct, frozen=True, tag=True):
    result: bytes = b""  # JSON text; empty when the handler returned None


class Failed(msgspec.Struct, frozen=True, tag=True):
    error: ErrorInfo


class RetryLater(msgspec.Struct, frozen=True, tag=True):
    error: ErrorInfo
    delay_ms: int | None = None  # None: the retry policy's backoff


class Discarded(msgspec.Struct, frozen=True, tag=True):
    error: ErrorInfo


class Cancelled(msgspec.Struct, frozen=True, tag=True):
    """The job was cancelled through the broker while it ran: nothing to report."""


class Released(msgspec.Struct, frozen=True, tag=True):
    """The pool stopped before the job finished: hand it back without spending the attempt."""


class Stuck(msgspec.Struct, frozen=True, tag=True):
    """A sync handler ran past its timeout and would not stop."""

    error: ErrorInfo


Outcome = Completed | Failed | RetryLater | Discarded | Cancelled | Released | Stuck


class JobTimeout(TimeoutError):
    """The job ran past its timeout (raised through the middleware chain)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"Job execution exceeded timeout of {timeout_s:g} s")
        self.timeout_s = timeout_s


class HandlerStuck(JobTimeout):
    """A sync handler was asked to stop at its timeout and did not within the grace period."""


class Terminal:
    """The innermost call of the chain: the handler for ``ctx.job.type`` under its timeout."""

    def __init__(self, registry: Registry, *, threads: Executor, grace_s: float) -> None:
        self._handlers = registry.handlers
        self._threads = threads
        self._grace_s = grace_s
        self._in_threads: set[asyncio.Future[Any]] = set()  # sync handlers whose thread still runs
        self._argument_checks = {name: ArgumentCheck(name, spec.fn) for name, spec in registry.handlers.items()}
        self._limits = {
            name: asyncio.Semaphore(spec.concurrency)
            for name, spec in registry.handlers.items() if spec.concurrency
        }

    async def __call__(self, ctx: JobContext) -> Any:
        spec = self._handlers[ctx.job.type]
        limit = self._limits.get(spec.job_type)
        # The pool starts a job only when its type has room, so in a pool this never waits (a
        # wait here would not count against the timeout, yet would against the broker's deadline).
        if limit is None:
            return await self._run(spec, ctx)
        async with limit:
            return await self._run(spec, ctx)

    async def _run(self, spec: HandlerSpec, ctx: JobContext) -> Any:
        # Checked against the args the handler would get, after any middleware has had them.
        self._argument_checks[spec.job_type].check(ctx.job.args)
        if spec.is_async and ctx.timeout_s is None:
            return await spec.fn(ctx, *ctx.job.args)  # no deadline: no timeout scope to pay for
        if spec.is_async:
            scope = asyncio.timeout(ctx.timeout_s)
            try:
                async with scope:
                    return await spec.fn(ctx, *ctx.job.args)
            except TimeoutError:
                if not scope.expired():
                    raise
                ctx.request_stop(TIMEOUT)
                raise JobTimeout(ctx.timeout_s or 0) from None
        return await self._run_in_thread(spec, ctx)

    def threads_running(self) -> int:
        """Sync handlers still running in a thread: a timeout or a stop asks them to end, but
        nothing can make them."""
        return len(self._in_threads)

    async def _run_in_thread(self, spec: HandlerSpec, ctx: JobContext) -> Any:
        loop = asyncio.get_running_loop()
        # In a copy of this task's context: the trace context and the job's log fields go along.
        call = functools.partial(contextvars.copy_context().run, spec.fn, ctx, *ctx.job.args)
        future = loop.run_in_executor(self._threads, call)
        self._in_threads.add(future)
        future.add_done_callback(self._in_threads.discard)
        scope = asyncio.timeout(ctx.timeout_s)
        try:
            async with scope:
                # shield: a timeout or a cancellation must not forget the thread's future
                return await asyncio.shield(future)
        except TimeoutError:
            if not scope.expired():
                raise
        except asyncio.CancelledError:
            # A thread cannot be cancelled; its handler was asked to stop (ctx.cancelled). Its job
            # must not go back to the queue while it still runs, so the cancellation waits for
            # the thread (the stop's own deadline bounds the wait). The stop stands however the
            # handler ended, as a timeout does: one that saw ctx.cancelled and returned early
            # must not be taken for done.
            if ctx.stop_reason is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(future)
            raise
        ctx.request_stop(TIMEOUT)
        grace = asyncio.timeout(self._grace_s)
        try:
            async with grace:
                await asyncio.shield(future)
        except TimeoutError:
            if grace.expired():
                ctx.stuck_after_s = ctx.timeout_s or 0
                raise HandlerStuck(ctx.timeout_s or 0) from None
        except Exception:
            pass  # it stopped, by raising: still a timeout
        raise JobTimeout(ctx.timeout_s or 0)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


Chain = Callable[[JobContext], Awaitable[Any]]


async def execute(ctx: JobContext, chain: Chain, handlers: Container[str]) -> Outcome:
    """Run one job through the composed chain; every way it can end becomes an Outcome."""
    if ctx.job.type not in handlers:
        return Failed(ErrorInfo(
            code="handler_error", type="UnknownJobType", retryable=False,
            message=f"No handler is registered for job type '{ctx.job.type}'.",
        ))
    with tracing.job_span(ctx.job, worker_id=ctx.worker_id, workflow_step=ctx.workflow_step,
                          step_links=ctx.step_links) as attempt:
        outcome = await _run(ctx, chain)
        if ctx.stuck_after_s is not None and isinstance(outcome, (Failed, RetryLater)):
            # The stuck handler's timeout, as it reached the top (a timeout failure) or as
            # middleware made it a failure or a retry of its own: the thread runs on all the
            # same, so a retry must wait for the process to end (the error decides whether there
            # is one). What middleware completed, discarded or cancelled stays so; the pool is
            # replaced either way.
            outcome = Stuck(outcome.error)
        if attempt is not None:
            ctx.span_traceparent = attempt.traceparent
            _trace_outcome(attempt, outcome, ctx.job)
    return outcome


async def _run(ctx: JobContext, chain: Chain) -> Outcome:
    try:
        value = await chain(ctx)
    except asyncio.CancelledError:
        if ctx.stop_reason == CANCELLED:
            _uncancel()
            return Cancelled()
        if ctx.stop_reason == SHUTDOWN:
            _uncancel()
            return Released()
        raise
    except JobTimeout as err:
        return Failed(timeout_error(err.timeout_s))
    except InvalidArguments as err:
        return Failed(ErrorInfo(code="invalid_arguments", type="invalid_arguments", retryable=False, message=str(err)))
    except Retry as err:
        delay_ms = None if err.delay_s is None else _bounded_ms(err.delay_s)
        until = None
        if err.key_paused_s is not None:  # the broker stops the job's rate-limit key until then
            until = timefmt.format_ms(timefmt.now_ms() + _bounded_ms(err.key_paused_s, MAX_KEY_PAUSE_MS))
        return RetryLater(ErrorInfo(code="RETRY", type="Retry", message=err.message, retryable=True,
                                    rate_limit_until=until), delay_ms)
    except Discard as err:
        return Discarded(ErrorInfo(
            code="DISCARD", type="Discard", message=err.reason, retryable=False, response_code="DISCARD",
        ))
    except Exception as err:
        return Cancelled() if ctx.stop_reason == CANCELLED else Failed(error_info(err))
    if ctx.stop_reason == CANCELLED:
        return Cancelled()
    return _completed(value)


MAX_RETRY_DELAY_MS = 365 * 86_400_000  # a handler's own retry delay, at most a year
MAX_KEY_PAUSE_MS = failures.MAX_KEY_PAUSE_MS  # a handler's pause of its rate-limit key, at most a week


def _bounded_ms(seconds: float, most: int = MAX_RETRY_DELAY_MS) -> int:
    """A handler's duration in ms, within [0, most] (NaN: 0), so no value can fail the settle."""
    if seconds != seconds:  # NaN
        return 0
    return int(min(max(seconds * 1000, 0), most))


def _trace_outcome(attempt: tracing.Attempt, outcome: Outcome, job: Job) -> None:
    """The attempt's outcome on its consumer span: a failure the retry policy retries is
    ``retry`` while attempts are left, else ``failed`` (as :func:`settle` and nack.lua judge)."""
    if isinstance(outcome, Completed):
        attempt.outcome("completed")
        return
    if isinstance(outcome, Cancelled | Released):
        attempt.outcome("cancelled" if isinstance(outcome, Cancelled) else "released")
        return
    error = outcome.error
    if isinstance(outcome, Discarded):
        name = "discarded"
    else:
        non_retryable = list((job.retry or {}).get("non_retryable_errors") or [])
        retried = isinstance(outcome, RetryLater) or failures.verdict(error, requeue=False, non_retryable=non_retryable) == "retry"
        name = "retry" if retried and job.attempt < job.max_attempts else "failed"
    backtrace = "\n".join(error.backtrace) if isinstance(error.backtrace, list) else error.backtrace
    attempt.outcome(name, error_type=error.type or error.code or "error", error_message=error.message,
                    backtrace=backtrace, attempt=job.attempt)


def _completed(value: Any) -> Outcome:
    if value is None:
        return Completed()
    try:
        return Completed(msgspec.json.encode(value))
    except (TypeError, ValueError, OverflowError) as err:
        return Failed(ErrorInfo(
            code="handler_error", type="ResultNotSerializable", retryable=False,
            message=f"The handler's result is not JSON-serializable: {err}",
        ))


def error_info(err: BaseException) -> ErrorInfo:
    """A handler exception as the OJS error object: its type, message and traceback."""
    cls = type(err)
    retryable = getattr(err, "retryable", None)
    return ErrorInfo(
        code="handler_error",
        type=cls.__name__,
        message=(str(err) or cls.__name__)[:MAX_MESSAGE_CHARS],
        retryable=retryable if isinstance(retryable, bool) else None,
        details={"error_class": f"{cls.__module__}.{cls.__qualname__}"},
        backtrace=[frame.rstrip("\n") for frame in traceback.format_exception(err)],
    )


def timeout_error(timeout_s: float) -> ErrorInfo:
    return ErrorInfo(
        code="timeout", type="timeout", retryable=True,
        message=f"Job execution exceeded timeout of {timeout_s:g} s",
        details={"timeout_kind": "execution", "limit_seconds": timeout_s},
    )


def settle(outcome: Outcome, ctx: JobContext, *, worker_id: str, now_ms: int) -> Completion | Failure | None:
    """The ack or nack item for an outcome, carrying the claim (its fencing token, worker id and
    attempt), so a stale worker cannot settle a job that was reclaimed meanwhile."""
    job = ctx.job
    if isinstance(outcome, Completed):
        return Completion(job_id=job.id, result=outcome.result, worker_id=worker_id, attempt=job.attempt,
                          claim=ctx.claim)
    if isinstance(outcome, Cancelled):
        return None
    if isinstance(outcome, Released):
        verdict, error = "release", failures.server_error(
            "shutdown", "shutdown", "The worker stopped before the job finished; released without "
            "spending an attempt", now_ms,
        )
    elif isinstance(outcome, RetryLater):
        return Failure(job_id=job.id, verdict="retry", error=failures.error_record(outcome.error, now_ms),
                       worker_id=worker_id, attempt=job.attempt, claim=ctx.claim, delay_ms=outcome.delay_ms)
    elif isinstance(outcome, Discarded):
        verdict, error = "discard", failures.error_record(outcome.error, now_ms)
    else:  # Failed, Stuck: the job's retry policy decides
        non_retryable = (job.retry or {}).get("non_retryable_errors") or []
        verdict = failures.verdict(outcome.error, requeue=False, non_retryable=list(non_retryable))
        error = failures.error_record(outcome.error, now_ms)
    return Failure(job_id=job.id, verdict=verdict, error=error, worker_id=worker_id, attempt=job.attempt,
                   claim=ctx.claim)


def observe(ctx: JobContext, outcome: Outcome, item: Completion | Failure | None, result: object) -> None:
    """Metrics of one finished attempt, once its ack or nack returned `result` (an exception
    when the job was cancelled or reaped meanwhile: then it is counted where that happened)."""
    job = ctx.job
    if isinstance(result, Exception):
        return
    if isinstance(outcome, (Failed, Stuck)) and outcome.error.code == "timeout":
        metrics.JOBS_TIMED_OUT.labels(job.queue, job.type).inc()
    if isinstance(outcome, Completed):
        name = "completed"
    elif isinstance(outcome, Cancelled):
        name = "cancelled"
    elif isinstance(item, Failure) and isinstance(result, NackResult):
        name = failures.settled_outcome(item.verdict, result.state, on_exhaustion=(job.retry or {}).get("on_exhaustion"))
    else:
        return
    metrics.job_outcome(job.queue, job.type, name, time.monotonic() - ctx.started_s)
