"""``OJS_DURABILITY=replicated`` on a server without replicas: every enqueue, ack and nack waits
for a replica that never confirms, so each is an unknown outcome (the write was made on the
primary), and calls made together share one WAIT. (With a replica, and through a failover:
tests/test_sentinel_failover.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.core import Broker, Completion
from runtime.broker.durability import NotReplicated
from runtime.broker.keys import Keys
from runtime.config import Settings
from tests.broker.conftest import TEST_PREFIX, Run, body, new_job

TIMEOUT_MS = 50


@pytest.fixture
def replicated(redis_url: str, run: Run[Any]) -> Iterator[Broker]:
    client = Redis.from_url(redis_url)
    broker = Broker(client, Settings(redis_url=redis_url, key_prefix=TEST_PREFIX, durability="replicated",
                                     durability_timeout_ms=TIMEOUT_MS))
    try:
        yield broker
    finally:
        run(broker.close())
        run(client.aclose())


def test_an_enqueue_no_replica_confirms_is_an_unknown_outcome_made_on_the_primary(
        replicated: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys) -> None:
    job = new_job({**body(), "id": "019a0000-0000-7000-8000-000000000001"})
    with pytest.raises(NotReplicated, match="0 of 1 replica"):
        run(replicated.enqueue([job], now_ms=timefmt.now_ms()))
    assert redis_client.hget(keys.job(job.id), "state") == b"available"


def test_an_ack_no_replica_confirms_fails_and_its_repeat_is_taken_as_done(
        replicated: Broker, broker: Broker, enqueue: Callable[..., list[str]], run: Run[Any],
        redis_client: redis.Redis, keys: Keys) -> None:
    (job_id,) = enqueue(body())
    (claimed,) = run(broker.fetch(["default"], worker_id="w1"))
    ack = Completion(job_id=job_id, worker_id="w1", claim=claimed[b"claim"].decode())
    for _ in range(2):  # a pool sends it again until a replica confirms it
        with pytest.raises(NotReplicated):
            run(replicated.ack_many([ack]))
    assert redis_client.hget(keys.job(job_id), "state") == b"completed"


def test_calls_made_together_share_one_wait(replicated: Broker, run: Run[Any]) -> None:
    writes = replicated.scripts._replicated
    assert writes is not None
    sent: list[int] = []
    send_many = writes._send_many

    async def counted(*commands: Any) -> list[Any]:
        sent.append(sum(1 for c in commands if c[0] == "WAIT"))
        return await send_many(*commands)

    writes._send_many = counted
    with pytest.raises(NotReplicated):  # the first enqueue of a process reads the schema registry first
        run(replicated.enqueue([new_job(body())], now_ms=0))
    sent.clear()

    async def ten() -> list[Any]:
        jobs = [new_job(body()) for _ in range(10)]
        return await asyncio.gather(*(replicated.enqueue([j], now_ms=0) for j in jobs), return_exceptions=True)

    outcomes = run(ten())
    assert all(isinstance(o, NotReplicated) for o in outcomes)
    assert sent == [1]  # the ten scripts left in one write, with one WAIT after them
