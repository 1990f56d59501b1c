"""The runtime against a faulty network: real `ojs-run` processes talk to Redis through a TCP
proxy (tests/fixtures/tcp_proxy.py) that loses replies, goes silent or refuses connections.
The handlers reach Redis directly, so what they record is never lost. Waits have deadlines; the
only sleeps are the faults' own durations."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from redis.asyncio import Redis

from runtime import Client, Draft
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.broker.scripts import LIBRARY_CODE, function_name
from runtime.config import Settings
from tests.fixtures.procs import Start, free_port, job, run, states, wait_until
from tests.fixtures.tcp_proxy import FaultProxy

pytestmark = pytest.mark.slow

KEYS = Keys()
FETCH = function_name("fetch").encode()
ACK = function_name("ack").encode()
# A dead link is noticed within one to two of these.
COMMAND_TIMEOUT_MS = "1000"


@pytest.fixture
def proxy(redis_url: str, redis_client: redis.Redis) -> Iterator[FaultProxy]:
    # Loaded up front, so the first call of a function runs at once (no reload on the way).
    redis_client.function_load(LIBRARY_CODE, replace=True)
    with FaultProxy(redis_url) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OJS_REDIS_COMMAND_TIMEOUT_MS", COMMAND_TIMEOUT_MS)


def enqueue(redis_url: str, *drafts: Draft) -> list[str]:
    async def go() -> list[str]:
        async with Client(redis_url) as client:
            return [i for i in await client.enqueue_many(drafts) if i is not None]

    ids: list[str] = run(go())
    return ids


def done_count(client: redis.Redis, job_id: str, attempt: int) -> int:
    return int(client.hget("pooltest:done", f"{job_id}:{attempt}") or 0)


def test_a_fetch_whose_reply_is_lost_hands_its_claims_back_at_once(
    proxy: FaultProxy, start: Start, redis_url: str, redis_client: redis.Redis,
) -> None:
    # Given: a job with a single attempt waits; the pool's first fetch will claim it, and its
    # reply will be lost (the connection is dropped once the fetch has reached Redis)
    (job_id,) = enqueue(redis_url, Draft(type="count.job", options={"retry": {"max_attempts": 1}}))
    proxy.drop_reply(FETCH)
    # When: a pool starts (no scheduler: no lease reaper would ever step in)
    runtime = start("--redis", proxy.url(), "--processes", "1", "--concurrency", "1", "--no-http")
    assert proxy.dropped.wait(20), runtime.log()
    # Then: the pool finds the claim it never heard of, hands it back without spending the only
    # attempt, and runs the job, well before any lease (60 s) would have lapsed
    wait_until(lambda: states(redis_client, [job_id]) == ["completed"], timeout_s=10,
               what="the job claimed by the lost fetch to run")
    assert done_count(redis_client, job_id, 1) == 1
    assert "handed back" in runtime.log()


def test_an_ack_waits_out_a_redis_outage_and_lands(
    proxy: FaultProxy, start: Start, redis_url: str, redis_client: redis.Redis,
) -> None:
    # Given: a job runs
    runtime = start("--redis", proxy.url(), "--processes", "1", "--concurrency", "2", "--no-http")
    (job_id,) = enqueue(redis_url, Draft(type="gate.wait"))
    wait_until(lambda: redis_client.lrange(f"pooltest:runs:{job_id}", 0, -1) == [b"1"], what="the job to start")
    # When: Redis goes away (connections refused) for longer than the old five tries lasted
    # (about 3 s), and the handler finishes meanwhile
    proxy.down()
    redis_client.rpush(f"pooltest:go:{job_id}:1", 1)
    wait_until(lambda: done_count(redis_client, job_id, 1) == 1, what="the handler to finish")
    time.sleep(5)
    assert job(redis_client, job_id)["state"] == "active"
    proxy.up()
    # Then: the ack lands soon after Redis is back, and the job ran once
    wait_until(lambda: states(redis_client, [job_id]) == ["completed"], timeout_s=10, what="the ack to land")
    assert redis_client.lrange(f"pooltest:runs:{job_id}", 0, -1) == [b"1"]
    assert "not settled by this worker" not in runtime.log()


def _ready(base_url: str) -> int:
    """/ready's status code; 0 while the endpoint does not answer yet."""
    try:
        return httpx.get(f"{base_url}/ready", timeout=10).status_code
    except httpx.TransportError:
        return 0


def _metric(base_url: str, name: str) -> float | None:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_a_resent_ack_whose_first_landed_counts_as_done(
    proxy: FaultProxy, start: Start, redis_url: str, redis_client: redis.Redis,
) -> None:
    # Given: the pool's next ack will reach Redis and its reply be lost
    port = free_port()
    runtime = start("--redis", proxy.url(), "--processes", "1", "--http", f"127.0.0.1:{port}")
    runtime.wait_ready(1)
    proxy.drop_reply(ACK)
    # When: a job completes
    (job_id,) = enqueue(redis_url, Draft(type="count.job"))
    assert proxy.dropped.wait(20), runtime.log()
    wait_until(lambda: states(redis_client, [job_id]) == ["completed"], what="the job to complete")
    # Then: the pool's second send of that ack is taken as done: the completion is counted
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _metric(base, 'ojs_job_completed_total{queue="default",type="count.job"}') == 1.0,
               timeout_s=10, what="the completion to be counted")
    assert "not settled by this worker" not in runtime.log()


def test_a_silent_link_is_reported_and_survived(
    proxy: FaultProxy, start: Start, redis_url: str, redis_client: redis.Redis,
) -> None:
    # Given: a runtime whose every link to Redis goes through the proxy, ready
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runtime = start("--redis", proxy.url(), "--processes", "1", "--http", f"127.0.0.1:{port}")
    wait_until(lambda: _ready(base) == 200, what="/ready")
    # When: the link goes silent (sockets kept, bytes swallowed) while jobs arrive
    proxy.blackhole()
    ids = enqueue(redis_url, *(Draft(type="count.job") for _ in range(3)))
    # Then: the pool says so once, /ready says not ready, and the gauge reads 0
    wait_until(lambda: "cannot reach Redis" in runtime.log(), timeout_s=10, what="the warning")
    assert _ready(base) == 503
    wait_until(lambda: _metric(base, 'ojs_redis_up{role="pool"}') == 0.0, timeout_s=10, what="ojs_redis_up 0")
    time.sleep(3)  # the outage goes on: the pool keeps failing its calls, quietly
    assert runtime.log().count("cannot reach Redis") == 1
    assert states(redis_client, ids) == ["available"] * 3
    # And once the network is back (new connections work; the silent ones stay dead), the jobs
    # run, and the runtime is ready again
    proxy.restore()
    wait_until(lambda: states(redis_client, ids) == ["completed"] * 3, timeout_s=15, what="the jobs to run")
    wait_until(lambda: _ready(base) == 200, timeout_s=10, what="/ready again")
    assert _metric(base, 'ojs_redis_up{role="pool"}') == 1.0
    assert "reaches Redis again" in runtime.log()


def test_the_scheduler_loop_recovers_from_a_silent_link(
    proxy: FaultProxy, start: Start, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After its pause, the reaper waits out a grace before it expires leases: kept short here.
    monkeypatch.setenv("OJS_REAPER_OUTAGE_GRACE_MS", "500")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runtime = start("--redis", proxy.url(), "--processes", "1", "--http", f"127.0.0.1:{port}")
    wait_until(lambda: _ready(base) == 200, what="/ready")
    # Given: the scheduler's link went silent for a while, and came back
    proxy.blackhole()
    time.sleep(3)
    proxy.restore()
    # When: a job is claimed by a worker that then vanishes (a one-second lease, in a queue no
    # pool serves)
    (job_id,) = enqueue(redis_url, Draft(type="count.job", options={"queue": "orphans"}))

    async def claim() -> None:
        client = Redis.from_url(redis_url)
        broker = Broker(client, Settings(redis_url=redis_url))
        try:
            await broker.fetch(["orphans"], worker_id="vanished", visibility_ms=1_000)
        finally:
            await broker.close()
            await client.aclose()

    run(claim())
    assert job(redis_client, job_id)["state"] == "active"
    # Then: the scheduler loop steps again and reaps the lapsed lease
    wait_until(lambda: job(redis_client, job_id)["state"] == "available", timeout_s=15,
               what="the scheduler to reap the lease")
    assert "vanished" != job(redis_client, job_id).get("worker_id")
    assert runtime.proc.poll() is None


def test_a_client_call_on_a_silent_link_fails_within_its_deadline_and_works_once_it_is_back(
    proxy: FaultProxy, redis_client: redis.Redis,
) -> None:
    """A producer must never hang on Redis: every Client call has the command deadline the
    runtime's own connections have, and fails with a connection error when it passes."""

    async def go() -> None:
        async with Client(proxy.url()) as client:
            (job_id,) = await client.enqueue_many([Draft(type="count.job")])
            assert job_id is not None
            assert (await client.get(job_id))["state"] == "available"
            proxy.blackhole()
            for call in (lambda: client.get(job_id), lambda: client.enqueue_many([Draft(type="count.job")]),
                         lambda: client.cancel(job_id)):
                began = time.monotonic()
                with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                    async with asyncio.timeout(10 * int(COMMAND_TIMEOUT_MS) / 1000):  # a hang fails here instead
                        await call()
                assert time.monotonic() - began < 3 * int(COMMAND_TIMEOUT_MS) / 1000
            proxy.restore()
            assert (await client.get(job_id))["state"] == "available"

    run(go())
