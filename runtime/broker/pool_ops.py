"""Broker operations of the worker pools that the core does not offer in the shape they need.

* :class:`Batcher` collects acks and nacks for a few milliseconds and sends each kind in one
  ``ack_many`` / ``fail_many`` call (one script call for many jobs), and keeps sending a call
  that did not get through while its claims can still be valid (ack.lua and nack.lua take a
  re-sent outcome that had landed already as done).
* :func:`listen_for_work` subscribes to the queues' notify channels on a dedicated connection and
  calls back on every message (the scripts publish whenever a job becomes available).
* :func:`release_worker` fails every job a pool process held (``worker:<id>:jobs``) with one
  verdict (``release`` when it was stopped on purpose); after a crash, :func:`death_verdicts`
  gives each job its own (see there).
* :func:`release_worker_blocking` is that for the supervisor, which has no event loop: a
  short-lived loop and connection, both gone when it returns (nothing survives to the next fork).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Generic, TypeVar

from runtime import metrics, timefmt
from runtime.broker import BACKEND_ERRORS, failures, wire
from runtime.broker.clients import redis_client
from runtime.broker.core import AckResult, Broker, Completion, Failure, NackResult
from runtime.broker.shards import shard_settings
from runtime.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
SETTLE_MAX_BACKOFF_S = 1.0  # a settle waits at most this long after Redis is back
DEFAULT_SETTLE_FOR_S = 60.0


class _Batch(Generic[T, R]):
    def __init__(self) -> None:
        self.items: list[T] = []
        self.futures: list[asyncio.Future[R | Exception]] = []


class Batcher:
    """Acks and nacks reported within ``window_s`` of each other (or ``max_items`` of them) go to
    Redis in one call per kind. Each caller awaits its own job's result."""

    def __init__(
        self, broker: Broker, *, window_s: float = 0.002, max_items: int = 64,
        settle_for_s: float = DEFAULT_SETTLE_FOR_S, on_trouble: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self._broker = broker
        self._window_s = window_s
        self._max_items = max_items
        # A call that cannot reach Redis is sent again, with backoff, for this long after its
        # first failure: the caller's lease length, after which its claims have surely lapsed
        # (the lease reaper owns the jobs then). Cut short by close().
        self._settle_for_s = settle_for_s
        self._on_trouble = on_trouble  # told of each failed call (the error) and each one that got through (None)
        self._closing = asyncio.Event()
        self._acks: _Batch[Completion, AckResult] = _Batch()
        self._fails: _Batch[Failure, NackResult] = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def ack(self, item: Completion) -> asyncio.Future[AckResult | Exception]:
        return self._add(self._acks, item)

    def fail(self, item: Failure) -> asyncio.Future[NackResult | Exception]:
        return self._add(self._fails, item)

    async def close(self, *, grace_s: float | None = None) -> None:
        """Send what is waiting and wait for every call in flight; with `grace_s`, calls that
        still cannot reach Redis are given up that long after (the reaper owns their jobs)."""
        self._flush()
        if grace_s is not None and self._sending:
            _done, pending = await asyncio.wait(self._sending, timeout=grace_s)
            if pending:
                self._closing.set()
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _add(self, batch: _Batch[T, R], item: T) -> asyncio.Future[R | Exception]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R | Exception] = loop.create_future()
        batch.items.append(item)
        batch.futures.append(future)
        if len(self._acks.items) + len(self._fails.items) >= self._max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        acks, self._acks = self._acks, _Batch()
        fails, self._fails = self._fails, _Batch()
        if acks.items or fails.items:
            task = asyncio.get_running_loop().create_task(self._send(acks, fails))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, acks: _Batch[Completion, AckResult], fails: _Batch[Failure, NackResult]) -> None:
        if acks.items:
            await self._deliver(acks, lambda: self._broker.ack_many(acks.items))
        if fails.items:
            await self._deliver(fails, lambda: self._broker.fail_many(fails.items, now_ms=timefmt.now_ms()))

    async def _deliver(self, batch: _Batch[T, R], call: Callable[[], Awaitable[list[R | Exception]]]) -> None:
        """One batched call, sent again while Redis is unreachable and the claims may be valid
        (see `settle_for_s`); every waiter gets its job's result, or the last error."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._settle_for_s
        backoff_s = FIRST_BACKOFF_S
        tries = 0
        while True:
            tries += 1
            try:
                outcome: list[R | Exception] | Exception = await call()
            except Exception as err:
                outcome = err
                if not isinstance(err, BACKEND_ERRORS):
                    logger.exception("settling %d job(s) failed", len(batch.items))
                    break
                if self._on_trouble is not None:
                    self._on_trouble(err)
                closing = self._closing.is_set()
                if closing or loop.time() + backoff_s > give_up_at:
                    logger.warning("settling %d job(s) given up after %d tries (%s); their leases lapse "
                                   "and the reaper takes them", len(batch.items), tries, err)
                    break
                if tries == 1:
                    logger.info("settling %d job(s) failed (%s); sending again until Redis answers",
                                len(batch.items), err)
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, SETTLE_MAX_BACKOFF_S)
                continue
            if tries > 1:
                logger.info("settled %d job(s) at try %d", len(batch.items), tries)
            if self._on_trouble is not None:
                self._on_trouble(None)
            break
        results = outcome if isinstance(outcome, list) else [outcome] * len(batch.items)
        for future, result in zip(batch.futures, results, strict=False):
            if not future.done():
                future.set_result(result)

    async def _pause(self, seconds: float) -> None:
        """Sleep between two tries; close() ends it early. asyncio.timeout, not wait_for: on
        Python 3.11 a wait_for whose wait ends as its task is cancelled returns instead of
        raising, and the retry loop would go on after a cancel."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass


async def listen_for_work(broker: Broker, queues: Sequence[str], wake: Callable[[], None]) -> None:
    """Call `wake` whenever a job becomes available in one of `queues`; runs until cancelled.
    A lost connection is re-subscribed with backoff (and `wake` is called, as jobs may have
    arrived meanwhile)."""
    channels = [broker.keys.notify(queue) for queue in queues]
    address = broker.scripts.wire.address if broker.scripts.wire is not None else None
    backoff_s = FIRST_BACKOFF_S
    failures_in_a_row = 0

    def subscribed() -> None:
        nonlocal backoff_s, failures_in_a_row
        backoff_s, failures_in_a_row = FIRST_BACKOFF_S, 0
        wake()

    while True:
        try:
            if address is not None:
                await wire.subscribe(address, channels, lambda _channel, _data: wake(), on_ready=subscribed)
            else:
                await _subscribe_through_client(broker, channels, wake, subscribed)
        except Exception as err:
            failures_in_a_row += 1
            if isinstance(err, BACKEND_ERRORS):
                # Once per outage: the pool reports the outage itself (runtime.redis_link).
                log = logger.warning if failures_in_a_row == 1 else logger.debug
                log("notifications lost (%s); subscribing again in %.1fs", err, backoff_s)
            else:
                logger.exception("notifications failed; subscribing again in %.1fs", backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)


async def _subscribe_through_client(
    broker: Broker, channels: Sequence[str], wake: Callable[[], None], subscribed: Callable[[], None],
) -> None:
    """The same through redis-py, where the lean connection does not apply (a custom
    connection class)."""
    pubsub = broker.redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*channels)
        subscribed()
        async for _message in pubsub.listen():
            wake()
    finally:
        await pubsub.aclose()


async def held_ids(broker: Broker, worker_id: str) -> list[str]:
    """The ids of the jobs `worker_id` holds (``worker-jobs:<id>``), sorted."""
    members = await broker.redis.smembers(broker.keys.worker_jobs(worker_id))
    return sorted(x.decode() if isinstance(x, bytes) else x for x in members)


async def held_claims(broker: Broker, worker_id: str) -> dict[str, tuple[str, int | None]]:
    """What Redis says `worker_id` holds: claim token -> (job id, attempt), for its active jobs
    (two round trips; only after a call whose outcome is unknown)."""
    ids = await held_ids(broker, worker_id)
    if not ids:
        return {}
    async with broker.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(broker.keys.job(job_id), ["state", "worker_id", "claim", "attempt"])
        rows = await pipe.execute()
    held: dict[str, tuple[str, int | None]] = {}
    for job_id, (state, holder, claim, attempt) in zip(ids, rows, strict=True):
        if state == b"active" and holder == worker_id.encode() and claim:
            held[claim.decode()] = (job_id, int(attempt) if attempt and attempt.isdigit() else None)
    return held


def death_verdicts(
    held: Collection[str], running: Collection[str] | None, settling: Collection[str],
) -> dict[str, str]:
    """The verdict for each job a dead pool process held, from what it was doing with them
    (`running` None: not known). Only a running handler can have killed the process:

    * running, and the only job the process held: ``worker_lost``, a loss of its own;
    * running beside others: ``worker_lost_shared``, no loss counted (any of them may be the
      cause), and the job runs alone next (nack.lua);
    * its handler had returned, the outcome was on its way: ``outcome_lost`` (it runs again,
      first in its queue; the attempt it used stays spent);
    * buffered (prefetched, or claimed by a fetch whose reply never came): ``release``;
    * not known: ``worker_lost_shared`` for all (suspected, nothing counted)."""
    if running is None:
        return dict.fromkeys(held, "worker_lost_shared")
    alone = len(held) == 1 and len(running) == 1 and set(held) == set(running)
    verdicts = {}
    for job_id in held:
        if job_id in running:
            verdicts[job_id] = "worker_lost" if alone else "worker_lost_shared"
        else:
            verdicts[job_id] = "outcome_lost" if job_id in settling else "release"
    return verdicts


async def release_worker(
    broker: Broker, worker_id: str, *, verdict: str, error: bytes,
    verdicts: Callable[[list[str]], Mapping[str, str]] | None = None,
    errors: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Fail every job `worker_id` still holds, with `verdict` (or, given `verdicts`, the verdict
    it maps each held id to, and the error `errors` has for that verdict); forget the worker.
    Returns the ids."""
    k = broker.keys
    ids = await held_ids(broker, worker_id)
    if ids:
        chosen = verdicts(ids) if verdicts is not None else dict.fromkeys(ids, verdict)
        items = [Failure(job_id=i, verdict=chosen[i], error=(errors or {}).get(chosen[i], error),
                         worker_id=worker_id) for i in ids]
        results = await broker.fail_many(items, now_ms=timefmt.now_ms())
        for item, result in zip(items, results, strict=False):
            if not isinstance(result, Exception):
                metrics.JOBS_RECOVERED.labels("released" if item.verdict == "release" else "worker_lost").inc()
        await broker.count_failures(items, results)
    async with broker.redis.pipeline(transaction=True) as pipe:
        pipe.delete(k.worker(worker_id))
        pipe.zrem(k.workers, worker_id)
        await pipe.execute()
    return ids


def release_worker_blocking(
    settings: Settings, worker_id: str, *, crashed: bool, running: Collection[str] | None = None,
    settling: Collection[str] = (), timeout_s: float = 10.0,
) -> list[str]:
    """:func:`release_worker` from synchronous code, on its own loop and connection (the plain
    asyncio loop: uvloop's resolver would leave threads behind in a process that forks). A
    process that `crashed` was `running` those jobs (None: not known), see :func:`death_verdicts`;
    one that was stopped has all its jobs released."""
    now = timefmt.now_ms()
    verdicts: Callable[[list[str]], Mapping[str, str]] | None = None
    errors: dict[str, bytes] = {}
    if crashed:
        verdict, error = "worker_lost", failures.server_error(
            "worker_death", "worker_death", "The worker process died while running the job", now,
        )
        errors = {
            "worker_lost_shared": error,
            "outcome_lost": failures.server_error(
                "worker_death", "worker_death", "The worker process died after the job's handler "
                "returned, before its outcome was recorded", now,
            ),
            "release": b"",  # it never started: nothing went wrong with it
        }
        verdicts = functools.partial(death_verdicts, running=running, settling=settling)
    else:
        verdict, error = "release", failures.server_error(
            "shutdown", "shutdown", "The worker process was stopped before the job finished; "
            "released without spending an attempt", now,
        )

    async def one(shard: Settings) -> list[str]:
        redis = redis_client(shard, socket_timeout=timeout_s)
        broker = Broker(redis, shard)
        try:
            return await release_worker(broker, worker_id, verdict=verdict, error=error, verdicts=verdicts,
                                        errors=errors)
        finally:
            await broker.close()
            await redis.aclose()

    async def go() -> list[str]:
        # In every shard: a pool holds jobs in the one it serves, a worker of the HTTP API in any.
        held = await asyncio.wait_for(asyncio.gather(*map(one, shard_settings(settings))), timeout_s)
        return [job_id for ids in held for job_id in ids]

    return asyncio.run(go())


