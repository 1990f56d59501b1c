"""A fetch whose outcome is unknown (the connection closed at its deadline with the command
written) may run late: a stalled Redis still reads it off the closed socket, possibly after it
has answered the pool's look at what it holds (over another connection). The claim it makes must
still be found and handed back, not left unheld, unrun and unheartbeated for a whole lease.

An in-process pool on the test's Redis; its broker's fetch is wrapped to play the late run."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis

from runtime import Draft
from runtime.broker.wire import OutcomeUnknown
from runtime.config import Settings
from runtime.context import JobContext
from runtime.handlers import HandlerSpec, Registry
from runtime.liveness import Liveness
from runtime.worker import Pool, PoolConfig
from tests.fixtures.procs import job, run, wait_until
from tests.test_pool_claims import enqueue


def test_a_fetch_that_runs_after_the_pools_look_is_still_found_and_its_job_runs(
    redis_url: str, redis_client: redis.Redis,
) -> None:
    (job_id,) = enqueue(redis_url, Draft(type="quick"))

    async def quick(ctx: JobContext) -> None:
        return None

    registry = Registry(module="inline", handlers={"quick": HandlerSpec(job_type="quick", fn=quick, is_async=True)})
    config = PoolConfig(module="inline", settings=Settings(redis_url=redis_url), worker_id="pool-late",
                        queues=(("default", 1),), concurrency=1, recheck_interval_s=0.05)
    liveness = Liveness()
    pool = Pool(config, registry=registry, liveness=liveness)
    real_fetch = pool.broker.fetch
    calls = 0
    first: list[tuple[Any, Any]] = []

    async def fetch(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # sent, no reply within the deadline: its outcome is unknown ...
            first.append((args, kwargs))
            raise OutcomeUnknown("Redis did not answer within 1s; connection closed.")
        if calls == 2:  # ... and Redis runs it now, after the pool's look (the claim is made)
            await real_fetch(*first[0][0], **first[0][1])
        return await real_fetch(*args, **kwargs)

    pool.broker.fetch = fetch  # type: ignore[method-assign]

    async def go() -> bytes | None:
        task = asyncio.create_task(pool.run())
        with contextlib.suppress(AssertionError):  # the state is asserted below, with the job's record
            # far below the 60 s lease the job would wait otherwise
            await asyncio.to_thread(wait_until, lambda: redis_client.hget(f"{{ojs}}:job:{job_id}", "state")
                                    == b"completed", timeout_s=10, what="the job to complete")
        pool.request_stop()
        await task
        return redis_client.hget(f"{{ojs}}:job:{job_id}", "state")

    try:
        final = run(go())
    finally:
        pool.threads.shutdown(wait=False)
        liveness.close()
    # Then: the claim nobody ran was found by the look after, handed back, and the job ran
    assert final == b"completed", job(redis_client, job_id)
    assert calls >= 2
