"""fetch.lua through Broker.fetch: ordering, pausing, exclusive claims, lazy promotion, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis

from runtime import timefmt
from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from tests.broker.conftest import Run, body, decoded, read_job

Enqueue = Callable[..., list[str]]


def ids_of(jobs: list[dict[bytes, bytes]]) -> list[str]:
    return [h[b"id"].decode() for h in jobs]


def test_fetch_claims_highest_priority_then_fifo(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: priorities enqueued out of order, with ties
    ids = enqueue(*(body(priority=p) for p in (0, 10, -10, 10, 0, -10)))
    # When
    claimed = ids_of(run(broker.fetch(["default"], count=6)))
    # Then: 10 > 0 > -10, and enqueue order within a priority
    assert claimed == [ids[1], ids[3], ids[0], ids[4], ids[2], ids[5]]


def test_fetch_claims_in_enqueue_order_across_calls(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    first = enqueue(body())
    second = enqueue(body(), body())
    assert ids_of(run(broker.fetch(["default"], count=3))) == first + second


def test_fetch_tries_queues_in_given_order(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: the second queue's job is older and has a higher priority
    (old,) = enqueue(body(queue="low", priority=100))
    (new,) = enqueue(body(queue="high"))
    # When / Then: the first queue named wins
    assert ids_of(run(broker.fetch(["high", "low"]))) == [new]
    assert ids_of(run(broker.fetch(["high", "low"]))) == [old]


def test_fetch_count_fills_from_later_queues(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    (a,) = enqueue(body(queue="a"))
    b = enqueue(body(queue="b"), body(queue="b"), body(queue="b"))
    assert ids_of(run(broker.fetch(["a", "b"], count=3))) == [a, b[0], b[1]]


def test_fetch_quotas_take_shares_then_fill_in_order(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    a = enqueue(*(body(queue="a") for _ in range(3)))
    b = enqueue(*(body(queue="b") for _ in range(3)))
    claimed = ids_of(run(broker.fetch(["a", "b"], count=5, quotas=[1, 2])))
    assert claimed == [a[0], b[0], b[1], a[1], a[2]]


def test_fetch_skips_paused_queue(enqueue: Enqueue, broker: Broker, admin: Admin, run: Run[Any]) -> None:
    # Given: a paused queue listed first
    paused_ids = enqueue(body(queue="p"), body(queue="p"))
    (other,) = enqueue(body(queue="q"))
    run(admin.set_paused("p", True))
    # When / Then: its jobs are skipped, the next queue serves
    assert ids_of(run(broker.fetch(["p", "q"], count=5))) == [other]
    assert run(broker.fetch(["p"])) == []
    # When resumed, its jobs come back in FIFO order
    run(admin.set_paused("p", False))
    assert ids_of(run(broker.fetch(["p"], count=5))) == paused_ids


def test_fetch_claim_sets_attempt_lease_and_holder(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given
    (job_id,) = enqueue(body(timeout_ms=5_000))
    now = timefmt.now_ms()
    # When
    (h,) = run(broker.fetch(["default"], worker_id="w1", visibility_ms=30_000, now_ms=now))
    # Then
    job = decoded(h)
    assert job["state"] == "active"
    assert job["attempt"] == "1"
    assert job["started_at"] == str(now)
    assert job["worker_id"] == "w1"
    assert job["visible_until"] == str(now + 30_000)
    assert job["exec_deadline"] == str(now + 5_000)
    assert redis_client.zscore(keys.active, job_id) == now + 5_000  # the earlier deadline
    assert redis_client.smembers(keys.worker_jobs("w1")) == {job_id.encode()}
    assert redis_client.hget(keys.counts("default"), "active") == b"1"
    assert redis_client.hget(keys.counts("default"), "available") == b"0"


def test_fetch_job_visibility_wins_over_request(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    enqueue(body(visibility_timeout_ms=7_000))
    now = timefmt.now_ms()
    (h,) = run(broker.fetch(["default"], visibility_ms=30_000, now_ms=now))
    assert h[b"visible_until"] == str(now + 7_000).encode()


def test_fetch_default_visibility_applies_without_one(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    enqueue(body())
    now = timefmt.now_ms()
    (h,) = run(broker.fetch(["default"], now_ms=now))
    assert h[b"visible_until"] == str(now + broker.settings.default_visibility_ms).encode()


def test_fetch_one_job_is_claimed_exactly_once_under_concurrency(
    enqueue: Enqueue, broker: Broker, run: Run[Any]
) -> None:
    # Given: one job and many workers asking at once
    (job_id,) = enqueue(body())

    async def race() -> list[list[dict[bytes, bytes]]]:
        return await asyncio.gather(*(broker.fetch(["default"], worker_id=f"w{n}") for n in range(25)))

    # When
    results = run(race())
    # Then: exactly one winner, claimed at attempt 1
    winners = [jobs for jobs in results if jobs]
    assert len(winners) == 1
    assert ids_of(winners[0]) == [job_id]
    assert winners[0][0][b"attempt"] == b"1"


def test_fetch_concurrent_batches_never_share_a_job(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    ids = enqueue(*(body() for _ in range(40)))

    async def race() -> list[list[dict[bytes, bytes]]]:
        return await asyncio.gather(*(broker.fetch(["default"], count=3, worker_id=f"w{n}") for n in range(20)))

    claimed = [job_id for jobs in run(race()) for job_id in ids_of(jobs)]
    assert sorted(claimed) == sorted(ids)


def test_fetch_promotes_due_scheduled_job_lazily(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job due in an hour
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(scheduled_at="+PT1H"), now_ms=now)
    # When / Then: not before its time
    assert run(broker.fetch(["default"], now_ms=now + 3_599_999)) == []
    assert read_job(redis_client, keys, job_id)["state"] == "scheduled"
    # When / Then: the fetch at its time promotes and claims it in the same call
    due = now + 3_600_000
    (h,) = run(broker.fetch(["default"], now_ms=due))
    assert h[b"id"] == job_id.encode()
    assert h[b"enqueued_at"] == str(due).encode()
    assert redis_client.zcard(keys.delayed) == 0


def test_fetch_discards_expired_job_without_completing_it(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an available job that expires in a minute, and one that does not
    now = timefmt.now_ms()
    (expiring,) = enqueue(body(expires_at="+PT1M"), now_ms=now)
    (other,) = enqueue(body(), now_ms=now)
    # When: fetched after its expiry
    later = now + 60_000
    claimed = ids_of(run(broker.fetch(["default"], count=2, now_ms=later)))
    # Then: never handed out; discarded with expired_at, no completed_at
    assert claimed == [other]
    job = read_job(redis_client, keys, expiring)
    assert job["state"] == "discarded"
    assert job["expired_at"] == job["discarded_at"] == str(later)
    assert job["previous_state"] == "available"
    assert "completed_at" not in job
    assert b'"type":"expired"' in redis_client.hget(keys.job(expiring), "error")
    events = [f[b"type"] for _, f in redis_client.xrange(keys.events)]
    assert b"job.expired" in events


def test_fetch_expires_scheduled_and_pending_jobs(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    now = timefmt.now_ms()
    scheduled, pending = enqueue(body(scheduled_at="+PT1H", expires_at="+PT1M"),
                                 body(pending=True, expires_at="+PT1M"), now_ms=now)
    assert run(broker.fetch(["default"], count=0, now_ms=now + 60_000)) == []
    for job_id, before in ((scheduled, "scheduled"), (pending, "pending")):
        job = read_job(redis_client, keys, job_id)
        assert (job["state"], job["previous_state"]) == ("discarded", before)
    assert redis_client.zcard(keys.delayed) == 0


def test_fetch_gives_nothing_to_a_quiet_worker(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a worker that reported itself quiet
    enqueue(body())
    run(broker.heartbeat("w1", [], state="quiet"))
    # When / Then: it gets nothing, another worker gets the job
    assert run(broker.fetch(["default"], worker_id="w1")) == []
    assert len(run(broker.fetch(["default"], worker_id="w2"))) == 1


def test_fetch_skips_stale_index_entry(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an available-set entry whose job hash is gone (e.g. deleted by an operator)
    ghost, real = enqueue(body(), body())
    redis_client.delete(keys.job(ghost))
    redis_client.hincrby(keys.counts("default"), "available", -1)
    # When / Then: the ghost entry is dropped and the next job is claimed
    assert ids_of(run(broker.fetch(["default"]))) == [real]
    assert redis_client.zcard(keys.available("default")) == 0


def test_fetch_with_type_room_leaves_jobs_of_a_full_type_in_place(
    enqueue: Enqueue, broker: Broker, keys: Keys, run: Run[Any],
) -> None:
    # Given, in one queue: two jobs of a type the caller can start one more of, one of a type it
    # cannot start at all, and an unlimited one, interleaved
    ids = enqueue(body("t.one"), body("t.none"), body("t.one"), body("t.free"))
    scores = dict(run(broker.redis.zrange(keys.available("default"), 0, -1, withscores=True)))
    # When a pool fetches with that room
    claimed = ids_of(run(broker.fetch(["default"], count=4, worker_id="w1",
                                      type_room={"t.one": 1, "t.none": 0})))
    # Then it gets what it can start, in queue order; the others keep their place in the queue
    assert claimed == [ids[0], ids[3]]
    left = run(broker.redis.zrange(keys.available("default"), 0, -1, withscores=True))
    assert left == [(ids[1].encode(), scores[ids[1].encode()]), (ids[2].encode(), scores[ids[2].encode()])]
    assert run(broker.get(ids[1]))[b"state"] == b"available"
    # And with room again, the next fetch takes them in their old order
    assert ids_of(run(broker.fetch(["default"], count=4, worker_id="w1", type_room={"t.one": 1, "t.none": 1}))) == [
        ids[1], ids[2]]


def test_fetch_exec_grace_moves_only_that_callers_execution_deadline(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    # Given two jobs with a 1 s timeout
    first, second = enqueue(body(timeout_ms=1000), body(timeout_ms=1000))
    now = timefmt.now_ms()
    # When a pool claims one with a grace, and an HTTP worker claims the other without
    (pooled,) = run(broker.fetch(["default"], worker_id="pool", now_ms=now, exec_grace_ms=5_200))
    (plain,) = run(broker.fetch(["default"], worker_id="http", now_ms=now))
    # Then the backstop deadline counts the grace for the pool's claim only
    assert pooled[b"id"] == first.encode() and plain[b"id"] == second.encode()
    assert int(pooled[b"exec_deadline"]) == now + 1_000 + 5_200
    assert int(plain[b"exec_deadline"]) == now + 1_000
