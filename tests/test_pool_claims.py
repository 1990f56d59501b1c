"""A pool's claims, end to end: what it claims, what it keeps alive, and what it does with a job
it cannot run. Real `ojs-run` processes (or an in-process `Pool`) and a real Redis, no mocks.

Handlers live in tests/fixtures/pool_handlers.py; the gated ones run until the test opens their
gate (``pooltest:go:*``), so every interleaving below is forced, not waited for by time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
import redis
from redis.asyncio import Redis

from runtime import Client, Draft
from runtime.broker.core import Broker, Failure
from runtime.broker.pool_ops import release_worker_blocking
from runtime.config import Settings
from runtime.context import JobContext
from runtime.handlers import HandlerSpec, Registry
from runtime.liveness import Liveness
from runtime.worker import Pool, PoolConfig
from tests.fixtures.procs import (
    KEYS,
    Start,
    free_port,
    integrity_problems,
    job,
    run,
    states,
    wait_until,
)

pytestmark = pytest.mark.slow


def enqueue(redis_url: str, *drafts: Draft) -> list[str]:
    async def go() -> list[str]:
        async with Client(redis_url) as client:
            ids = await client.enqueue_many(drafts)
        return [i for i in ids if i is not None]

    ids: list[str] = run(go())
    return ids


def events_of(client: redis.Redis, job_id: str, kind: bytes) -> int:
    return sum(
        1 for _, f in client.xrange(KEYS.events)
        if f[b"type"] == kind and msgspec.json.decode(f[b"data"]).get("job_id") == job_id
    )


def lease_deadline(client: redis.Redis, job_id: str) -> float:
    """Where the reaper will find the job: its place in the active set."""
    score = client.zscore(KEYS.active, job_id)
    assert score is not None
    return float(score)


# --- a job the pool cannot decode (item: poison checkpoint) ----------------------------------


def test_progress_endpoint_refuses_a_checkpoint_the_pool_cannot_decode(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a running job
    port = free_port()
    start("--processes", "1", "--http", f"127.0.0.1:{port}")
    (job_id,) = enqueue(redis_url, Draft(type="gate.wait"))
    wait_until(lambda: states(redis_client, [job_id]) == ["active"], what="the job to start")
    url = f"http://127.0.0.1:{port}/ojs/v1/jobs/{job_id}/progress"
    # When a client sends a checkpoint that is JSON but holds a number no decoder can represent
    reply = httpx.put(url, content=b'{"checkpoint":[1e400]}', headers={"content-type": "application/json"})
    # Then it is refused with the OJS error body, and nothing is stored for the next claim to choke on
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_request"
    assert "checkpoint" in reply.json()["error"]["message"]
    assert "checkpoint" not in job(redis_client, job_id)
    # And a checkpoint the pool can read is still stored
    good = httpx.put(url, json={"checkpoint": {"step": 2}})
    assert good.status_code == 200, good.text
    assert msgspec.json.decode(job(redis_client, job_id)["checkpoint"]) == {"step": 2}
    redis_client.rpush(f"pooltest:go:{job_id}:1", "1")
    wait_until(lambda: states(redis_client, [job_id]) == ["completed"], what="the job to complete")


def test_a_job_the_pool_cannot_decode_fails_alone_and_the_pool_keeps_running(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given, written by an older version straight into Redis: a job whose checkpoint no decoder
    # can represent, a job whose args are not JSON, and ordinary jobs queued behind them
    bad_checkpoint, bad_args = enqueue(redis_url, Draft(type="ctl.ok"), Draft(type="ctl.ok"))
    redis_client.hset(KEYS.job(bad_checkpoint), "checkpoint", b"[1e400]")
    redis_client.hset(KEYS.job(bad_args), "args", b"[1,")
    good = enqueue(redis_url, *(Draft(type="ctl.ok") for _ in range(3)))
    # When a pool claims them
    runtime = start("--processes", "1", "--concurrency", "5", "--no-http")
    # Then the undecodable jobs fail alone, at once and for good, with an error that says why
    wait_until(lambda: states(redis_client, [bad_checkpoint, bad_args]) == ["discarded"] * 2,
               what="both undecodable jobs to fail")
    wait_until(lambda: states(redis_client, good) == ["completed"] * 3, what="the other jobs to complete")
    errors = [msgspec.json.decode(job(redis_client, i)["error"]) for i in (bad_checkpoint, bad_args)]
    assert [(e["type"], e["retryable"]) for e in errors] == [("InvalidJob", False)] * 2
    assert "checkpoint" in errors[0]["message"]
    # And the pool process never died: one pool started, none replaced
    assert len(runtime.pool_pids()) == 1
    assert "crashed" not in runtime.log()
    assert integrity_problems(redis_url) == []


async def _hold(ctx: JobContext) -> None:
    await asyncio.Event().wait()


class _PoolWithADefect(Pool):
    """A pool whose own loop fails right after it started a job (any bug of the pool itself)."""

    def _start(self, *args: Any) -> None:
        super()._start(*args)
        raise RuntimeError("a defect in the pool's own loop")


def test_a_pool_that_crashes_does_not_hand_its_running_job_back_as_released(
    redis_url: str, redis_client: redis.Redis,
) -> None:
    # Given a pool whose loop crashes while a job's handler runs
    (job_id,) = enqueue(redis_url, Draft(type="gate.hold"))
    settings = Settings(redis_url=redis_url)
    registry = Registry(module="inline", handlers={
        "gate.hold": HandlerSpec(job_type="gate.hold", fn=_hold, is_async=True)})
    config = PoolConfig(module="inline", settings=settings, worker_id="pool-with-a-defect",
                        queues=(("default", 1),), concurrency=1)
    liveness = Liveness()
    pool = _PoolWithADefect(config, registry=registry, liveness=liveness)
    try:
        # When the exception escapes the pool's loop
        with asyncio.Runner() as runner:
            with pytest.raises(RuntimeError, match="defect"):
                runner.run(pool.run())
            # What the supervisor reads once the process has ended (read before the runner closes
            # the loop: a real pool process exits without unwinding its job tasks)
            record = liveness.jobs.read()
    finally:
        pool.threads.shutdown(wait=False)
        liveness.close()
    # Then the job is not released (that would give its attempt back and hide the crash): it is
    # still held by the dead worker, for the worker-loss path the supervisor takes on exit code 1
    held = job(redis_client, job_id)
    assert (held["state"], held["attempt"], held.get("worker_id")) == ("active", "1", "pool-with-a-defect")
    assert redis_client.sismember(KEYS.worker_jobs("pool-with-a-defect"), job_id)
    assert record is not None
    assert release_worker_blocking(settings, "pool-with-a-defect", crashed=True, running=record.running,
                                   settling=record.settling) == [job_id]
    lost = job(redis_client, job_id)
    assert (lost["state"], lost["lost"]) == ("available", "1")


# --- per-type concurrency (item: saturated types) --------------------------------------------


def test_pool_does_not_claim_a_job_of_a_type_at_its_concurrency_limit(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a pool with free slots running one job of a type limited to one at a time
    runtime = start("--processes", "1", "--concurrency", "3", "--no-http")
    runtime.wait_ready(1)
    (first,) = enqueue(redis_url, Draft(type="limited.gate"))
    wait_until(lambda: redis_client.lrange("pooltest:limited", 0, -1) == [first.encode()],
               what="the first limited job to start")
    # When a second job of that type arrives, then an unlimited one behind it
    (second,) = enqueue(redis_url, Draft(type="limited.gate"))
    (other,) = enqueue(redis_url, Draft(type="ctl.ok"))
    # Then the pool runs the unlimited one but leaves the second in the queue: it could not start it
    wait_until(lambda: states(redis_client, [other]) == ["completed"], what="the unlimited job")
    waiting = job(redis_client, second)
    assert (waiting["state"], waiting["attempt"]) == ("available", "0")
    # And it claims the second as soon as the first is done: each runs once, on its first attempt
    redis_client.rpush(f"pooltest:go:{first}", "1")
    wait_until(lambda: redis_client.llen("pooltest:limited") == 2, what="the second limited job to start")
    redis_client.rpush(f"pooltest:go:{second}", "1")
    wait_until(lambda: states(redis_client, [first, second]) == ["completed"] * 2, what="both limited jobs")
    assert [job(redis_client, i)["attempt"] for i in (first, second)] == ["1", "1"]
    assert redis_client.hgetall("pooltest:done") == {f"{first}:1".encode(): b"1", f"{second}:1".encode(): b"1"}
    assert integrity_problems(redis_url) == []


# --- a re-claimed job (item: claim-keyed running work) ---------------------------------------


def test_a_reclaimed_job_keeps_its_heartbeats_after_the_earlier_run_ends(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a pool (no reaper of its own: --no-http) running a job whose handler holds on
    runtime = start("--processes", "1", "--concurrency", "2", "--no-http", "--lease", "3")
    (job_id,) = enqueue(redis_url, Draft(type="gate.wait"))
    runs = f"pooltest:runs:{job_id}"
    wait_until(lambda: redis_client.lrange(runs, 0, -1) == [b"1"], what="the first run to start")

    async def reaper_step() -> None:
        client = Redis.from_url(redis_url)
        broker = Broker(client, Settings(redis_url=redis_url))
        try:
            await broker.scheduler_step()
        finally:
            await broker.close()
            await client.aclose()

    def lease_lapsed() -> bool:
        """Move the lease into the past and run the reaper's step (again, if a heartbeat
        renewed the lease in between), until the reaper has taken the first claim away."""
        current = job(redis_client, job_id)
        if (current["state"], current["attempt"]) != ("active", "1"):
            return True
        redis_client.zadd(KEYS.active, {job_id: 0})
        run(reaper_step())
        return False

    # When its lease lapses while the handler still runs, and the same pool claims the job again
    wait_until(lease_lapsed, what="the reaper to expire the first claim")
    wait_until(lambda: redis_client.lrange(runs, 0, -1) == [b"1", b"2"], what="the second run to start")
    # And the first run ends (its ack is refused: its claim is stale)
    redis_client.rpush(f"pooltest:go:{job_id}:1", "1")
    wait_until(lambda: "not settled by this worker" in runtime.log(), what="the first run's refused ack")
    # Then the second run is still heartbeated: its lease keeps moving forward
    before = lease_deadline(redis_client, job_id)
    wait_until(lambda: lease_deadline(redis_client, job_id) > before, timeout_s=10,
               what="a heartbeat for the second run")
    assert job(redis_client, job_id)["attempt"] == "2"
    # And when it ends, its ack is the one accepted: completed once, with the second run's result
    redis_client.rpush(f"pooltest:go:{job_id}:2", "1")
    wait_until(lambda: states(redis_client, [job_id]) == ["completed"], what="the second run to complete")
    assert job(redis_client, job_id)["result"] == "2"
    assert events_of(redis_client, job_id, b"job.completed") == 1
    done: dict[Any, Any] = redis_client.hgetall("pooltest:done")
    assert done == {f"{job_id}:1".encode(): b"1", f"{job_id}:2".encode(): b"1"}
    assert integrity_problems(redis_url) == []


# --- a suspect runs alone (the pool keeps the isolation itself) -------------------------------


def test_a_pool_that_takes_a_suspect_runs_nothing_beside_it(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a suspect (lost beside another job) and a backlog behind it, and a pool of 4 slots
    (suspect,) = enqueue(redis_url, Draft(type="alone.probe", args=["suspect"]))

    async def lose_it() -> None:
        broker = Broker(Redis.from_url(redis_url), Settings(redis_url=redis_url))
        (claimed,) = await broker.fetch(["default"], worker_id="gone", idle=False)
        await broker.fail_many([Failure(job_id=suspect, verdict="worker_lost_shared", worker_id="gone",
                                        claim=claimed[b"claim"].decode())], now_ms=0)
        await broker.close()

    run(lose_it())
    backlog = enqueue(redis_url, *(Draft(type="alone.probe", args=[f"b{i}"]) for i in range(12)))
    running: set[str] = set()
    beside_the_suspect: list[set[str]] = []

    async def probe(ctx: JobContext, name: str) -> None:
        running.add(name)
        if name == "suspect" or "suspect" in running:
            beside_the_suspect.append(set(running))
        # the suspect outlasts several of the pool's re-checks: its free slots would claim then
        await asyncio.sleep(0.3 if name == "suspect" else 0.01)
        running.discard(name)

    registry = Registry(module="inline", handlers={
        "alone.probe": HandlerSpec(job_type="alone.probe", fn=probe, is_async=True)})
    config = PoolConfig(module="inline", settings=Settings(redis_url=redis_url), worker_id="pool-alone",
                        queues=(("default", 1),), concurrency=4, max_jobs=13, recheck_interval_s=0.05)
    liveness = Liveness()
    pool = Pool(config, registry=registry, liveness=liveness)
    try:
        # When it drains them all
        run(pool.run())
    finally:
        pool.threads.shutdown(wait=False)
        liveness.close()
    # Then every job completed, and while the suspect ran, it ran alone
    assert states(redis_client, [suspect, *backlog]) == ["completed"] * 13
    assert beside_the_suspect and all(seen == {"suspect"} for seen in beside_the_suspect), beside_the_suspect
    assert integrity_problems(redis_url) == []


# --- a stop ends the background loops ------------------------------------------------------


def test_the_heartbeat_loop_ends_when_cancelled_as_its_wait_ends(redis_url: str) -> None:
    # A wait that ends in the same loop iteration as the cancellation (a beat asked for as the
    # pool stops): on Python 3.11 asyncio.wait_for returns then instead of raising, and a
    # `while True` loop behind it outlived the pool's stop, so Pool.run never returned.
    registry = Registry(module="inline", handlers={})
    config = PoolConfig(module="inline", settings=Settings(redis_url=redis_url), worker_id="pool-beats",
                        queues=(("default", 1),), concurrency=1, heartbeat_interval_s=30)
    liveness = Liveness()
    pool = Pool(config, registry=registry, liveness=liveness)

    async def main() -> bool:
        beats = asyncio.get_running_loop().create_task(pool._heartbeats())  # noqa: SLF001
        deadline = asyncio.get_running_loop().time() + 10
        while not pool.beat_soon._waiters:  # noqa: SLF001 (the loop waits for the next beat)
            assert asyncio.get_running_loop().time() < deadline, "the heartbeat loop never waited for a beat"
            await asyncio.sleep(0.01)
        pool.beat_soon.set()
        beats.cancel()
        done, _ = await asyncio.wait([beats], timeout=10)
        if not done:
            beats.cancel()
        await pool.broker.close()
        return bool(done)

    try:
        assert run(main()), "the heartbeat loop went on after it was cancelled"
    finally:
        pool.threads.shutdown(wait=False)
        liveness.close()

