"""JobContext: what a handler and its middleware get besides the job's args.

Progress is throttled here, per job: at most one write every ``progress_interval_s`` (1 s by
default, OJS progress §6.2), always keeping the latest value, and flushed once more when the
handler returns, before the job is acked or nacked. Progress never raises into the handler: a
failed write is logged and dropped (the next one carries the newer value anyway).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"  # the job was cancelled through the broker
SHUTDOWN = "shutdown"  # the pool is stopping and hands the job back
TIMEOUT = "timeout"  # the job ran past its timeout


class Job(msgspec.Struct, kw_only=True, frozen=True):
    """The job envelope as a handler sees it, with the OJS field names."""

    id: str
    type: str
    queue: str
    args: list[Any] = []
    meta: dict[str, Any] = {}
    priority: int = 0
    state: str = "active"
    attempt: int = 1
    max_attempts: int = 3
    timeout_ms: int | None = None
    visibility_timeout_ms: int | None = None
    retry: dict[str, Any] | None = None
    tags: list[str] | None = None
    created_at: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    scheduled_at: str | None = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = []
    workflow_id: str | None = None
    parent_results: list[Any] | None = None
    version: int | str | None = None  # as the producer stamped it (job-versioning extension)


class ProgressUpdate(msgspec.Struct, frozen=True, kw_only=True):
    value: float | None = None  # fraction in [0, 1]
    message: str | None = None
    data: bytes | None = None  # JSON text
    checkpoint: bytes | None = None  # JSON text

    def then(self, newer: ProgressUpdate) -> ProgressUpdate:
        """This update overtaken by a newer one; fields the newer one leaves out are kept."""
        return ProgressUpdate(
            value=newer.value if newer.value is not None else self.value,
            message=newer.message if newer.message is not None else self.message,
            data=newer.data if newer.data is not None else self.data,
            checkpoint=newer.checkpoint if newer.checkpoint is not None else self.checkpoint,
        )


ProgressSink = Callable[[str, ProgressUpdate], Awaitable[None]]


class ProgressThrottle:
    """At most one progress write per interval for one job; the latest value always wins."""

    def __init__(self, job_id: str, *, sink: ProgressSink, interval_s: float) -> None:
        self._job_id = job_id
        self._sink = sink
        self._interval_s = interval_s
        self._pending: ProgressUpdate | None = None
        self._last_write = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None

    def offer(self, update: ProgressUpdate) -> None:
        """Record an update (on the event loop thread); it is written now or when due."""
        self._pending = update if self._pending is None else self._pending.then(update)
        self._schedule()

    async def flush(self) -> None:
        """Write what is pending now, whatever the interval (the handler has returned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            await asyncio.shield(self._writing)
        if self._pending is not None:
            update, self._pending = self._pending, None
            await self._write(update)

    def _schedule(self) -> None:
        if self._pending is None or self._timer is not None or self._writing is not None:
            return  # a write in flight or scheduled picks the pending value up
        delay_s = self._last_write + self._interval_s - time.monotonic()
        if delay_s <= 0:
            self._start()
        else:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._pending is None:
            return
        update, self._pending = self._pending, None
        self._writing = asyncio.get_running_loop().create_task(self._write(update))
        self._writing.add_done_callback(self._written)

    def _written(self, _task: asyncio.Task[None]) -> None:
        self._writing = None
        self._schedule()

    async def _write(self, update: ProgressUpdate) -> None:
        self._last_write = time.monotonic()
        try:
            await self._sink(self._job_id, update)
        except Exception as err:
            logger.warning("progress of job %s not recorded: %s", self._job_id, err,
                           extra={"job_id": self._job_id})


_JOB_LOGGER = logging.getLogger("runtime.job")


class JobContext:
    """One execution of one job: the envelope, cancellation, progress and a scratch dict."""

    def __init__(
        self, job: Job, *, worker_id: str = "", progress: ProgressThrottle | None = None,
        loop: asyncio.AbstractEventLoop | None = None, timeout_s: float | None = None,
        last_checkpoint: Any = None, claim: str = "",
    ) -> None:
        self.job = job
        self.worker_id = worker_id
        self.claim = claim  # the claim's fencing token: every settle and progress write carries it
        self.timeout_s = timeout_s
        self.last_checkpoint = last_checkpoint
        self.metadata: dict[str, Any] = {}  # scoped to this execution, shared by the middleware
        # Traced runs only: a workflow step's index and the traceparents of the steps it waited
        # for, and the context of this attempt's own span (the steps after it link to it).
        self.workflow_step: int | None = None
        self.step_links: tuple[str, ...] = ()
        self.span_traceparent: str | None = None
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self.started_s = time.monotonic()
        self._progress = progress
        self._loop = loop
        self.stop_reason: str | None = None  # CANCELLED, SHUTDOWN or TIMEOUT once asked to stop
        # Set by the executor when a sync handler ignored its timeout (the timeout, in s): its
        # thread still runs, whatever the middleware around it made of that, so the pool
        # process must be replaced.
        self.stuck_after_s: float | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose lines carry the job's fields (made on first use: most handlers never ask)."""
        if self._logger is None:
            job = self.job
            self._logger = logging.LoggerAdapter(_JOB_LOGGER, {
                "job_id": job.id, "queue": job.queue, "type": job.type, "attempt": job.attempt,
                "worker_id": self.worker_id,
            })
        return self._logger

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def traceparent(self) -> str | None:
        """The producer's W3C trace context (``meta.traceparent``), if any. While the handler
        runs, :data:`runtime.tracing.TRACEPARENT` holds the context to propagate further."""
        value = self.job.meta.get("traceparent")
        return value if isinstance(value, str) else None

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop: the job was cancelled, timed out or is being handed
        back. A sync handler checks it between steps; an async one also gets CancelledError."""
        return self.stop_reason is not None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    async def progress(
        self, value: float | None = None, message: str | None = None, data: Any = None,
        *, checkpoint: Any = None, percent: bool = False,
    ) -> None:
        """Report progress: a fraction 0..1 (or 0..100 with ``percent=True``), a message, and
        JSON-native `data` / `checkpoint`. Throttled; never raises."""
        self.set_progress(value, message, data, checkpoint=checkpoint, percent=percent)

    def set_progress(
        self, value: float | None = None, message: str | None = None, data: Any = None,
        *, checkpoint: Any = None, percent: bool = False,
    ) -> None:
        """Like :meth:`progress`, callable from a sync handler's thread."""
        if self._progress is None or self._loop is None:
            return
        try:
            update = ProgressUpdate(
                value=_fraction(value, percent), message=message,
                data=None if data is None else msgspec.json.encode(data),
                checkpoint=None if checkpoint is None else msgspec.json.encode(checkpoint),
            )
        except (TypeError, ValueError) as err:
            self.logger.warning("progress ignored: %s", err)
            return
        if _on_loop(self._loop):
            self._progress.offer(update)
        else:
            self._loop.call_soon_threadsafe(self._progress.offer, update)

    async def flush_progress(self) -> None:
        if self._progress is not None:
            await self._progress.flush()


def _fraction(value: float | None, percent: bool) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"progress must be a finite number, got {value!r}")
    return min(1.0, max(0.0, value / 100 if percent else value))


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def job_from_fields(fields: Mapping[str, Any]) -> Job:
    """A Job from a plain mapping (tests and tools)."""
    return msgspec.convert(dict(fields), Job)
