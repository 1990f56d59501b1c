"""Result handles: wait for a job's outcome on the broker's event stream, not by polling.

``await job.result(timeout=10)`` returns the handler's result (decoded JSON) once the job has
completed, or raises :class:`JobFailed` carrying the job's final OJS error when it was discarded
(retries exhausted, a non-retryable error, expired) or cancelled.

Every state change is one Lua script that also appends a lifecycle event to ``P events`` (see
:mod:`runtime.broker.keys`), so the event and the state are never out of step. One
:class:`ResultWatch` per client reads that stream with ``XREAD BLOCK`` for all of its waiters at
once (one connection however many jobs are awaited) and wakes the waiter of a job when that
job's terminal event arrives. A waiter registers, makes sure the reader's position is no later
than now, and only then reads the job's state once: a job that ended before the wait is seen by
that read, one that ends after it by the reader.

The stream is capped (``OJS_EVENTS_MAXLEN``): a reader that falls a full page (at most half the
cap) behind may have lost entries to the trim, so after a full page every waiter reads its job's
state once more. With the
event stream disabled (``OJS_EVENTS_MAXLEN=0``) there is nothing to wait on, and a wait falls
back to reading the state with a growing delay (up to one second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from runtime.client import Client

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENDED = frozenset({"completed", "cancelled", "discarded"})
FAILED = frozenset({"cancelled", "discarded"})
ENDING_EVENTS = frozenset({b"job.completed", b"job.cancelled", b"job.discarded", b"job.expired"})
READ_BLOCK_MS = 1_000  # the reader re-checks whether anyone still waits this often
READ_COUNT = 500  # stream entries per read; a full page means the reader may be behind the trim
FALLBACK_MAX_DELAY_S = 1.0
READ_RETRY_S = 0.5


class JobFailed(Exception):
    """The job ended without a result: discarded (its final error in `error`) or cancelled."""

    def __init__(self, job_id: str, job_type: str, state: str, error: dict[str, Any] | None) -> None:
        self.job_id, self.job_type, self.state, self.error = job_id, job_type, state, error
        what = ""
        if error:
            kind = error.get("type") or error.get("code") or "error"
            what = f": {kind}: {error.get('message', '')}".rstrip(": ")
        super().__init__(f"job {job_id} ({job_type}) was {state}{what}")


class ResultWatch:
    """One client's reader of the event stream, shared by all of its waiters."""

    def __init__(self, client: Client, redis: Redis, stream: str) -> None:
        self._client = client
        self._redis = redis
        self._stream = stream
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._position = "0-0"
        self._closed = False
        # A page well under the cap: a reader that might have lost entries to the trim reads a
        # full page, and then has every waiter read its state again.
        self._page = max(1, min(READ_COUNT, client.settings.events_maxlen // 2))
        # The read blocks well within the client's command deadline, which would end it otherwise
        deadline_ms = client.settings.redis_command_timeout_ms
        self._block_ms = max(1, min(READ_BLOCK_MS, deadline_ms // 2)) if deadline_ms > 0 else READ_BLOCK_MS

    async def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """The job's envelope once it has ended. TimeoutError past `timeout` seconds."""
        if self._client.settings.events_maxlen <= 0:
            return await asyncio.wait_for(self._wait_without_events(job_id), timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            woken = self._register(job_id)
            try:
                await self._ensure_reader()
                envelope = await self._client.get(job_id)  # after subscribing: nothing is missed
                if envelope["state"] in ENDED:
                    return envelope
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # asyncio.timeout, not wait_for: on Python 3.11 a wait_for whose future is done
                # as its task is cancelled returns, and this loop would swallow the cancel.
                async with asyncio.timeout(left):
                    await woken
            finally:
                self._unregister(job_id, woken)

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    def _register(self, job_id: str) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError("the client is closed")
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(woken)
        return woken

    def _unregister(self, job_id: str, woken: asyncio.Future[None]) -> None:
        waiting = self._waiters.get(job_id)
        if waiting is not None:
            waiting.discard(woken)
            if not waiting:
                del self._waiters[job_id]

    async def _ensure_reader(self) -> None:
        async with self._starting:
            if self._reader is not None and not self._reader.done():
                return
            # The position is taken before the caller reads the job's state: an event appended
            # after that read is after this position.
            last = await self._redis.xrevrange(self._stream, count=1)
            self._position = last[0][0].decode() if last else "0-0"
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while self._waiters:
            try:
                reply = await self._redis.xread({self._stream: self._position}, block=self._block_ms,
                                                count=self._page)
            except Exception as err:  # Redis away: the events wait in the stream meanwhile
                logger.warning("cannot read the event stream (retrying): %s", err)
                await asyncio.sleep(READ_RETRY_S)
                continue
            entries = reply[0][1] if reply else []
            for stream_id, fields in entries:
                self._position = stream_id.decode()
                if fields.get(b"type") in ENDING_EVENTS:
                    self._wake(fields.get(b"subject", b"").decode())
            if len(entries) >= self._page:
                self._wake_all()  # possibly behind the trim: every waiter reads its state again
        self._reader = None

    def _wake(self, job_id: str) -> None:
        for woken in self._waiters.get(job_id, ()):
            if not woken.done():
                woken.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._wake(job_id)

    async def _wait_without_events(self, job_id: str) -> dict[str, Any]:
        delay = 0.05
        while True:
            envelope = await self._client.get(job_id)
            if envelope["state"] in ENDED:
                return envelope
            await asyncio.sleep(delay)
            delay = min(delay * 2, FALLBACK_MAX_DELAY_S)


def outcome(envelope: dict[str, Any]) -> Any:
    """The result of an ended job, or its failure raised."""
    if envelope["state"] in FAILED:
        raise JobFailed(envelope["id"], envelope.get("type", ""), envelope["state"], envelope.get("error"))
    return envelope.get("result")


class JobHandle(Generic[T]):
    """One enqueued job, by id, and the client it is read through."""

    __slots__ = ("id", "_client")

    def __init__(self, job_id: str, client: Client) -> None:
        self.id = job_id
        self._client = client

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def status(self) -> str:
        """The job's state now (scheduled, available, active, retryable, completed, ...)."""
        return str((await self._client.get(self.id))["state"])

    async def info(self) -> dict[str, Any]:
        """The job's envelope now."""
        return await self._client.get(self.id)

    async def result(self, timeout: float | None = None) -> T:
        """The handler's result once the job completes; raises :class:`JobFailed` when it was
        discarded or cancelled, ``TimeoutError`` after `timeout` seconds."""
        result: T = outcome(await (await self._client.watch_of(self.id)).wait(self.id, timeout))
        return result


class SyncJobHandle(Generic[T]):
    """A job enqueued from synchronous code: the same reads, blocking the caller."""

    __slots__ = ("id", "_handle", "_run")

    def __init__(self, handle: JobHandle[T], run: Callable[[Callable[[], Awaitable[Any]]], Any]) -> None:
        self.id = handle.id
        self._handle = handle
        self._run = run

    def __repr__(self) -> str:
        return f"SyncJobHandle({self.id!r})"

    def status(self) -> str:
        state: str = self._run(self._handle.status)
        return state

    def info(self) -> dict[str, Any]:
        envelope: dict[str, Any] = self._run(self._handle.info)
        return envelope

    def result(self, timeout: float | None = None) -> T:
        result: T = self._run(lambda: self._handle.result(timeout))
        return result
