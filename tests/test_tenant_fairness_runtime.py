"""Fair turns between tenants, measured under a real `ojs-run` pool: one tenant's burst of
10,000 jobs does not make a second tenant's 100 wait behind it."""

from __future__ import annotations

import pytest
import redis

from runtime import Client, Draft
from tests.fixtures.procs import Start, run, wait_until

pytestmark = pytest.mark.slow


def enqueue_for(redis_url: str, tenant: str, n: int) -> None:
    async def go() -> None:
        async with Client(redis_url) as client:
            for start in range(0, n, 1_000):
                await client.enqueue_many([
                    Draft(type="record.tenant", args=[tenant], meta={"tenant_id": tenant}, options={"queue": "shared"})
                    for _ in range(min(1_000, n - start))
                ])

    run(go())


def test_a_second_tenants_jobs_finish_within_a_few_times_their_fair_share(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given: tenant a enqueues 10,000 jobs into one queue, then tenant b 100
    enqueue_for(redis_url, "tenant-a", 10_000)
    enqueue_for(redis_url, "tenant-b", 100)
    # When: one pool of 2 processes with 10 slots each drains the queue
    start("--processes", "2", "--concurrency", "10", "--queues", "shared", "--no-http")
    wait_until(lambda: redis_client.llen("pooltest:tenants") >= 10_100, timeout_s=120, what="10,100 jobs done")
    # Then: b's jobs ran interleaved with a's (fair share: one in two while both wait), all of
    # them within the first 300 jobs run, where FIFO would have run them last (10,001..10,100)
    order = [x.decode() for x in redis_client.lrange("pooltest:tenants", 0, -1)]
    positions = [n for n, tenant in enumerate(order, 1) if tenant == "tenant-b"]
    print(f"tenant-b's 100 jobs ran at positions {positions[0]}..{positions[-1]} of {len(order)}; "
          f"median {positions[49]}")
    assert len(positions) == 100 and positions[-1] <= 300, positions
