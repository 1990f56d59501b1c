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
from runtime.broker.durability import NotReplicated, ReplicatedWrites
from runtime.broker.keys import Keys
from runtime.broker.wire import Wire
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


async def _until(condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Poll `condition` without blocking the event loop; its first true value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)
    return value


def test_calls_arriving_while_a_wait_blocks_go_out_together_behind_one_more_wait(
        redis_url: str, redis_client: redis.Redis, run: Run[Any]) -> None:
    """A WAIT holds its connection: batches sent while one blocks would queue behind it, each
    with a WAIT of its own, and a caller would wait one timeout per batch ahead of it. The WAITs
    here never time out; the test ends each one itself (CLIENT UNBLOCK answers it as a timeout)
    and counts how many it had to end before every caller was answered."""
    wire = Wire.from_url(redis_url)
    writes = ReplicatedWrites(wire.execute_many, replicas=1, timeout_ms=600_000)

    def blocked_wait() -> int | None:
        for client in redis_client.client_list():
            if client["cmd"] == "wait" and "b" in client["flags"]:
                return int(client["id"])
        return None

    async def go() -> tuple[int, list[Any]]:
        first = asyncio.ensure_future(writes.call(("INCR", f"{TEST_PREFIX}calls")))
        await _until(blocked_wait, "the first call's WAIT to block")
        later = []
        for _ in range(20):  # 20 callers, each in an event-loop iteration of its own
            later.append(asyncio.ensure_future(writes.call(("INCR", f"{TEST_PREFIX}calls"))))
            await asyncio.sleep(0.001)
        calls = [first, *later]
        waits_ended = 0
        while not all(c.done() for c in calls) and waits_ended <= len(calls):
            waiting = await _until(lambda: blocked_wait() or all(c.done() for c in calls), "a WAIT to block")
            if waiting is not True:
                redis_client.client_unblock(waiting)  # answered as a timeout: 0 replicas
                waits_ended += 1
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await wire.close()
        return waits_ended, outcomes

    waits_ended, outcomes = run(go())
    assert all(isinstance(o, NotReplicated) for o in outcomes), outcomes
    assert redis_client.get(f"{TEST_PREFIX}calls") == b"21"
    # The first call's WAIT, then one for the twenty that arrived while it blocked.
    assert waits_ended == 2, f"{waits_ended} WAITs were ended one after the other before all callers were answered"
