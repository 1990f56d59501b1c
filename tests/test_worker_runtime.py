"""The worker runtime end to end: real `ojs-run` processes, a real Redis, no mocks.

Handlers live in tests/fixtures/pool_handlers.py and record what they do under ``pooltest:*``
keys; tests wait on those records (or on job states) with deadlines, never on bare sleeps.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from runtime import Client, Draft
from runtime.embedded_redis import EmbeddedRedis
from runtime.errors import Duplicate
from tests.fixtures.procs import (
    KEYS,
    Runtime,
    Start,
    free_port,
    integrity_problems,
    job,
    run,
    states,
    wait_until,
)

pytestmark = pytest.mark.slow

HANDLERS = "tests.fixtures.pool_handlers"


def enqueue(redis_url: str, *drafts: Draft) -> list[str]:
    async def go() -> list[str]:
        async with Client(redis_url) as client:
            ids = await client.enqueue_many(drafts)
        return [i for i in ids if i is not None]

    ids: list[str] = run(go())
    return ids


def completed(client: redis.Redis, ids: list[str]) -> bool:
    return all(state == "completed" for state in states(client, ids))


def test_client_enqueue_get_cancel_and_enqueue_middleware(redis_url: str) -> None:
    async def drop_spam(draft: Draft, call_next: Any) -> Any:
        if draft.meta.get("spam"):
            return None
        draft.meta["stamped"] = True
        return await call_next()

    async def scenario() -> tuple[list[str | None], dict[str, Any], str]:
        async with Client(redis_url, middleware=[drop_spam]) as client:
            ids = await client.enqueue_many([
                Draft(type="count.job", args=[0], options={"queue": "q1", "priority": 5}),
                Draft(type="count.job", meta={"spam": True}),
            ])
            assert ids[0] is not None
            envelope = await client.get(ids[0])
            previous = await client.cancel(ids[0])
            with pytest.raises(TypeError, match="unknown enqueue option"):
                await client.enqueue("count.job", [], queueu="typo")
            # An id the caller chose is checked for collisions (a generated one needs no check)
            with pytest.raises(Duplicate):
                await client.enqueue("count.job", [], id=ids[0])
        return ids, envelope, previous

    ids, envelope, previous = run(scenario())
    assert ids[1] is None  # dropped by the middleware, not an error
    assert (envelope["queue"], envelope["priority"], envelope["args"], envelope["meta"]) == ("q1", 5, [0], {"stamped": True})
    assert previous == "available"


def test_pool_runs_jobs_and_middleware_wraps_them_like_an_onion(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given
    runtime = start("--processes", "1", "--no-http")
    runtime.wait_ready(1)
    # When
    (job_id,) = enqueue(redis_url, Draft(type="ctl.ok"))
    # Then
    wait_until(lambda: completed(redis_client, [job_id]), what="the job to complete")
    assert job(redis_client, job_id)["result"] == '"ok"'
    trace = [x.decode() for x in redis_client.lrange(f"pooltest:trace:{job_id}", 0, -1)]
    assert trace == ["outer:before", "inner:before", "handler", "inner:after", "outer:after"]


def test_pool_retry_with_delay_discard_and_failure(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given: a retry policy whose own backoff (an hour) would never let the test finish
    slow_policy = {"initial_interval": "PT1H", "max_interval": "PT1H", "jitter": False}
    runtime = start("--processes", "1", "--no-http")
    runtime.wait_ready(1)
    # When
    retry_id, discard_id, fail_id = enqueue(
        redis_url,
        Draft(type="ctl.retry", args=[0.2], options={"retry": slow_policy}),
        Draft(type="ctl.discard", options={"retry": {"on_exhaustion": "dead_letter"}}),
        Draft(type="ctl.fail", options={"retry": {**slow_policy, "non_retryable_errors": ["LookupError"]}}),
    )
    # Then: Retry(delay_s=0.2) overrides the policy's backoff; the second attempt completes
    wait_until(lambda: completed(redis_client, [retry_id]), what="the retried job to complete")
    retried = job(redis_client, retry_id)
    assert (retried["attempt"], retried["result"]) == ("2", "2")
    assert msgspec.json.decode(retried["e1"])["type"] == "Retry"
    # Discard: discarded at once, never dead-lettered
    wait_until(lambda: states(redis_client, [discard_id, fail_id]) == ["discarded", "discarded"], what="discards")
    discarded = job(redis_client, discard_id)
    assert discarded["attempt"] == "1"
    assert msgspec.json.decode(discarded["error"])["code"] == "DISCARD"
    assert redis_client.zscore(KEYS.dlq, discard_id) is None
    # A raised exception is recorded with its type, message and traceback; the policy decides
    failed = msgspec.json.decode(job(redis_client, fail_id)["error"])
    assert (failed["type"], failed["message"]) == ("LookupError", "the thing is missing")
    assert any("ctl_fail" in frame for frame in failed["backtrace"])
    assert integrity_problems(redis_url) == []


def test_pool_progress_is_visible_over_http(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given
    port = free_port()
    runtime = start("--processes", "1", "--http", f"127.0.0.1:{port}")
    runtime.wait_ready(1)
    base = f"http://127.0.0.1:{port}/ojs/v1/jobs"
    (job_id,) = enqueue(redis_url, Draft(type="progress.wait"))
    # When the handler has reported half way
    body = wait_until(lambda: _progress_at(f"{base}/{job_id}", 0.5), what="progress 0.5 on GET /jobs/{id}")
    # Then
    assert body["job"]["state"] == "active"
    progress = httpx.get(f"{base}/{job_id}/progress").json()
    assert (progress["progress"], progress["message"], progress["data"]) == (0.5, "half way", {"step": 1})
    redis_client.rpush(f"pooltest:go:{job_id}", "1")
    wait_until(lambda: completed(redis_client, [job_id]), what="the job to complete")
    assert httpx.get(f"{base}/{job_id}").json()["job"]["progress"] == 1.0


def _progress_at(url: str, value: float) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = httpx.get(url).json()
    except httpx.HTTPError:
        return None
    return body if body.get("job", {}).get("progress") == value else None


def test_pool_cancelled_job_stops_its_handler(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given a running job
    runtime = start("--processes", "1", "--no-http", "--heartbeat-interval", "0.2")
    runtime.wait_ready(1)
    (job_id,) = enqueue(redis_url, Draft(type="sleep.job", args=[60]))
    wait_until(lambda: redis_client.sismember("pooltest:started", job_id), what="the job to start")
    # When it is cancelled through the broker
    async def cancel() -> str:
        async with Client(redis_url) as client:
            return await client.cancel(job_id)

    assert run(cancel()) == "active"
    # Then the next heartbeat tells the pool, which cancels the handler (ctx.cancelled is true)
    wait_until(lambda: redis_client.sismember("pooltest:interrupted", f"{job_id}:True"), what="the handler to stop")
    assert job(redis_client, job_id)["state"] == "cancelled"
    assert integrity_problems(redis_url) == []


def test_pools_keep_a_rate_limit_keys_concurrency_and_drain_every_job(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given 40 jobs of one key allowed 2 at a time, and two pools with room for 8 each
    policy = {"key": "shared-api", "concurrency": 2}
    ids = enqueue(redis_url, *(Draft(type="limited.job", options={"rate_limit": policy}) for _ in range(40)))
    start("--processes", "2", "--concurrency", "8", "--no-http")
    # Then every job runs (a freed slot wakes the waiting pools), never more than 2 at once
    wait_until(lambda: completed(redis_client, ids), timeout_s=60, what="the 40 limited jobs to complete")
    seen = [int(x) for x in redis_client.lrange("pooltest:limited:seen", 0, -1)]
    assert len(seen) == 40 and max(seen) <= 2, seen
    assert integrity_problems(redis_url) == []


def test_pool_weighted_fairness_on_a_full_backlog(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given both queues full before any worker starts (each holds more than 2,000 jobs)
    enqueue(redis_url, *(Draft(type="record.queue", options={"queue": q}) for q in ("a", "b") for _ in range(2_100)))
    # When two 3:1 pools drain them
    start("--processes", "2", "--concurrency", "4", "--queues", "a:3,b:1", "--no-http")
    wait_until(lambda: redis_client.llen("pooltest:order") >= 2_000, timeout_s=60, what="2,000 jobs done")
    # Then over the first 2,000 jobs, a ran 3 times as often as b, within 10%
    first = Counter(x.decode() for x in redis_client.lrange("pooltest:order", 0, 1_999))
    assert 2.7 <= first["a"] / first["b"] <= 3.3, first


def test_pool_heartbeats_keep_a_cpu_bound_sync_job_leased(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given a 2 s lease, the reaper running (HTTP process), and a sync job burning CPU for 3 s
    start("--processes", "1", "--http", f"127.0.0.1:{free_port()}", "--lease", "2")
    (job_id,) = enqueue(redis_url, Draft(type="cpu.burn", args=[3]))
    # When it runs, the event loop thread still gets the GIL and heartbeats every ~0.7 s
    wait_until(lambda: completed(redis_client, [job_id]), what="the job to complete")
    # Then the lease never expired: one attempt, no error
    done = job(redis_client, job_id)
    assert done["attempt"] == "1" and "error" not in done and "e1" not in done


def test_pool_prefetches_behind_short_jobs_and_hands_back_what_waits_too_long(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a pool with one slot and a prefetch of 3 that has seen only short jobs
    runtime = start("--processes", "1", "--concurrency", "1", "--prefetch", "3", "--no-http", "--drain-timeout", "30")
    warm = enqueue(redis_url, *(Draft(type="count.job") for _ in range(5)))
    wait_until(lambda: completed(redis_client, warm), what="the short warm-up jobs")
    # When one job holds the slot and five more arrive behind it
    (held,) = enqueue(redis_url, Draft(type="progress.wait"))
    wait_until(lambda: states(redis_client, [held]) == ["active"], what="the holding job to start")
    worker_id = job(redis_client, held)["worker_id"]
    behind = enqueue(redis_url, *(Draft(type="count.job") for _ in range(5)))
    # Then three of them were claimed ahead by this worker (the broker's job.started events say so)
    def claimed_ahead() -> set[str]:
        started = (msgspec.json.decode(f[b"data"]) for _, f in redis_client.xrange(KEYS.events)
                   if f[b"type"] == b"job.started")
        return {e["job_id"] for e in started if e["job_id"] in behind and e["worker_id"] == worker_id}

    wait_until(lambda: len(claimed_ahead()) == 3, what="three jobs prefetched")
    # And since the slot stays busy, they go back to the queue, attempt unspent, none of them run
    wait_until(lambda: states(redis_client, behind) == ["available"] * 5, what="the prefetched jobs handed back")
    assert [job(redis_client, i)["attempt"] for i in behind] == ["0"] * 5
    assert not any(redis_client.hexists("pooltest:done", f"{i}:1") for i in behind)
    assert states(redis_client, [held]) == ["active"]
    # And once the slot is free they all run, once each
    redis_client.rpush(f"pooltest:go:{held}", "1")
    wait_until(lambda: completed(redis_client, [held, *behind]), what="everything done")
    assert all(redis_client.hget("pooltest:done", f"{i}:1") == b"1" for i in behind)
    runtime.send(signal.SIGTERM)
    assert runtime.wait_exit(30) == 0
    assert integrity_problems(redis_url) == []


def test_pool_carries_on_after_redis_restarts(
    make_embedded_redis: Callable[..., EmbeddedRedis], tmp_path: Path,
) -> None:
    # Given a pool on its own Redis that has run a job
    data_dir = str(tmp_path / "redis")
    server = make_embedded_redis(data_dir=data_dir, persistence=True, port=free_port())  # this worker's own
    url = server.start()
    port = server.port
    runtime = Runtime(url, HANDLERS, "--processes", "1", "--no-http", log_path=tmp_path / "ojs-run.log")
    try:
        runtime.wait_ready(1)
        (first,) = enqueue(url, Draft(type="count.job"))
        wait_until(lambda: completed(redis.Redis.from_url(url), [first]), what="the first job")
        # When Redis restarts on the same port and data (its script cache and subscriptions gone)
        server.stop()
        make_embedded_redis(data_dir=data_dir, persistence=True, port=port).start()
        # Then a job enqueued afterwards runs: the pool reconnects, reloads its scripts, listens again
        (second,) = enqueue(url, Draft(type="count.job"))
        client = redis.Redis.from_url(url)
        wait_until(lambda: completed(client, [first, second]), what="the job enqueued after the restart")
        # (the fixture handler's own redis-py connection may fail once on its stale socket, so the
        # job may need its retry; it completes exactly once either way)
        done = {k.decode(): int(v) for k, v in client.hgetall("pooltest:done").items()}
        assert sum(n for key, n in done.items() if key.startswith(second)) == 1
    finally:
        runtime.stop()
        print(runtime.log())
