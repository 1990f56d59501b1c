"""A stop whose drain timeout passes while a sync handler runs: the handler is asked to stop
(``ctx.cancelled``), and its thread cannot be cancelled. Its job must not go back to the queue
while the thread still runs (another worker could claim it: two runs at once); once it has ended, the job goes back
without spending an attempt, however the handler ended.

An in-process pool on the test's Redis; the stop is the pool's own (what SIGTERM calls)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

import redis

from runtime import Draft
from runtime.config import Settings
from runtime.context import JobContext
from runtime.handlers import HandlerSpec, Registry
from runtime.liveness import Liveness
from runtime.worker import Pool, PoolConfig
from tests.fixtures.procs import run, wait_until
from tests.test_pool_claims import enqueue

UNWIND_S = 0.3  # the handler's cleanup once asked to stop: well within cancel_deadline_s


def unwinding(ctx: JobContext, state_of_job: Callable[[], bytes | None]) -> bytes | None:
    """A sync handler's stop: wait to be asked, then clean up for UNWIND_S, or less if the job
    meanwhile leaves `active` (handed back under it: the defect ends the wait at once). Returns
    the job's state at the end of the cleanup."""
    wait_until(lambda: ctx.cancelled, timeout_s=10, what="the handler to be asked to stop")
    with contextlib.suppress(AssertionError):
        wait_until(lambda: state_of_job() != b"active", timeout_s=UNWIND_S, what="the job to leave active")
    return state_of_job()


def drain_one(redis_url: str, job_type: str, handler: Callable[[JobContext], object], started: threading.Event,
              *, cancel_deadline_s: float = 5.0, after_stop: Callable[[], None] = lambda: None) -> None:
    """Run a pool (worker id pool-<job_type>) with one sync handler; stop it once the handler
    runs, past a short drain. `after_stop` runs once the pool's stop is over (where a pool
    process ends), and again, harmlessly, if the run failed before."""
    registry = Registry(module="inline", handlers={job_type: HandlerSpec(job_type=job_type, fn=handler, is_async=False)})
    config = PoolConfig(module="inline", settings=Settings(redis_url=redis_url), worker_id=f"pool-{job_type}",
                        queues=(("default", 1),), concurrency=1, drain_timeout_s=0.1, cancel_deadline_s=cancel_deadline_s)
    liveness = Liveness()
    pool = Pool(config, registry=registry, liveness=liveness)

    async def go() -> None:
        task = asyncio.create_task(pool.run())
        assert await asyncio.to_thread(started.wait, 10), "the handler did not start"
        pool.request_stop()
        await task
        after_stop()

    try:
        run(go())
    finally:
        after_stop()
        pool.threads.shutdown(wait=True)
        liveness.close()


def test_a_sync_job_is_not_handed_back_while_its_handler_still_runs(redis_url: str, redis_client: redis.Redis) -> None:
    (job_id,) = enqueue(redis_url, Draft(type="sync.unwind"))
    started = threading.Event()
    seen_while_unwinding: list[bytes | None] = []

    def unwind(ctx: JobContext) -> None:
        started.set()
        seen_while_unwinding.append(unwinding(ctx, lambda: redis_client.hget(f"{{ojs}}:job:{job_id}", "state")))

    drain_one(redis_url, "sync.unwind", unwind, started)
    # Then: the job was still the handler's (active) to the end of its run, and handed back after
    assert seen_while_unwinding == [b"active"]
    assert redis_client.hget(f"{{ojs}}:job:{job_id}", "state") == b"available"
    assert redis_client.hget(f"{{ojs}}:job:{job_id}", "attempt") == b"0"  # a stop spends no attempt


def test_a_stop_stands_however_the_sync_handler_ends(redis_url: str, redis_client: redis.Redis) -> None:
    """As with a timeout: a handler that saw ctx.cancelled and returned must not be taken for
    done (it may have returned early); its job goes back, without spending an attempt."""
    (job_id,) = enqueue(redis_url, Draft(type="sync.finish"))
    started = threading.Event()

    def finish(ctx: JobContext) -> str:
        started.set()
        unwinding(ctx, lambda: redis_client.hget(f"{{ojs}}:job:{job_id}", "state"))
        return "done"

    drain_one(redis_url, "sync.finish", finish, started)
    assert redis_client.hget(f"{{ojs}}:job:{job_id}", "state") == b"available"
    assert redis_client.hget(f"{{ojs}}:job:{job_id}", "attempt") == b"0"


def test_a_job_whose_sync_handler_outlives_the_stop_stays_held_until_the_process_ends(
    redis_url: str, redis_client: redis.Redis,
) -> None:
    """A handler that goes on past the cancel deadline: the pool's stop ends with its thread
    still running, and the process ends right after (os._exit). The job is not handed back by
    the pool then: it stays held by the pool's worker id, for the supervisor to hand back once
    the process is gone (the lease reaper without one), so no other worker starts it while the
    thread runs."""
    (job_id,) = enqueue(redis_url, Draft(type="sync.outlive"))
    started, stop_returned = threading.Event(), threading.Event()
    held_after_the_stop: list[list[bytes | None]] = []

    def outlive(ctx: JobContext) -> None:
        started.set()
        wait_until(lambda: ctx.cancelled, timeout_s=10, what="the handler to be asked to stop")
        assert stop_returned.wait(20), "the pool's stop did not end"

    def stop_over() -> None:  # the pool's stop is over (a process would os._exit now); its handler still runs
        if not stop_returned.is_set():
            held_after_the_stop.append(redis_client.hmget(f"{{ojs}}:job:{job_id}", "state", "worker_id"))
        stop_returned.set()

    drain_one(redis_url, "sync.outlive", outlive, started, cancel_deadline_s=0.2, after_stop=stop_over)
    assert held_after_the_stop == [[b"active", b"pool-sync.outlive"]]
