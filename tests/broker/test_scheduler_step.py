"""Broker.scheduler_step (fetch.lua count 0 + expired_leases.lua + nack.lua): promotion, expiry,
lease and execution-timeout reaping. Overdue claims are made by fetching with a past ``now_ms``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker, Failure
from runtime.broker.keys import Keys
from runtime.errors import Conflict
from tests.broker.conftest import Run, body, no_jitter, read_job

Enqueue = Callable[..., list[str]]
MINUTE_MS = 60_000


def claim_in_the_past(broker: Broker, run: Run[Any], **kwargs: Any) -> dict[bytes, bytes]:
    """Claim as w1 a minute ago, so a short lease or timeout is already over."""
    (h,) = run(broker.fetch(["default"], worker_id="w1", now_ms=timefmt.now_ms() - MINUTE_MS, **kwargs))
    return h


def stored_error(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any]:
    return msgspec.json.decode(client.hget(keys.job(job_id), "error"))  # type: ignore[no-any-return]


def test_scheduler_step_requeues_expired_lease_without_extra_attempt(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a claim whose one-second lease ran out
    (job_id,) = enqueue(body(retry={"max_attempts": 3}))
    claim_in_the_past(broker, run, visibility_ms=1_000)
    # When
    assert run(broker.scheduler_step()) == 1
    # Then: available again, attempt still 1, the lease error recorded, the claim cleared
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"]) == ("available", "1")
    assert "worker_id" not in job and "started_at" not in job
    error = stored_error(redis_client, keys, job_id)
    assert (error["type"], error["code"], error["attempt"]) == ("visibility_timeout", "timeout", 1)
    assert not redis_client.exists(keys.worker_jobs("w1"))
    # And the next claim is attempt 2
    (h,) = run(broker.fetch(["default"]))
    assert h[b"attempt"] == b"2"


def test_scheduler_step_fails_execution_timeout_through_retry_policy(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a one-second execution timeout, long passed; the lease itself is still valid
    (job_id,) = enqueue(body(timeout_ms=1_000, retry=no_jitter(max_attempts=3, initial_interval="PT1S")))
    claim_in_the_past(broker, run)
    # When
    assert run(broker.scheduler_step()) == 1
    # Then: retryable with the policy's first delay, and a timeout error
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"], job["retry_delay_ms"]) == ("retryable", "1", "1000")
    error = stored_error(redis_client, keys, job_id)
    assert (error["type"], error["code"], error["timeout_kind"]) == ("timeout", "timeout", "execution")
    assert error["limit_seconds"] == 1.0


@pytest.mark.parametrize("overdue", ["lease", "timeout"])
@pytest.mark.parametrize("on_exhaustion", ["discard", "dead_letter"])
def test_scheduler_step_discards_when_attempts_are_spent(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    overdue: str, on_exhaustion: str,
) -> None:
    # Given: the only attempt overran
    options: dict[str, Any] = {"retry": {"max_attempts": 1, "on_exhaustion": on_exhaustion}}
    if overdue == "timeout":
        options["timeout_ms"] = 1_000
    (job_id,) = enqueue(body(**options))
    claim_in_the_past(broker, run, **({"visibility_ms": 1_000} if overdue == "lease" else {}))
    # When
    run(broker.scheduler_step())
    # Then
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"]) == ("discarded", "1")
    assert "completed_at" in job
    assert (redis_client.zscore(keys.dlq, job_id) is not None) is (on_exhaustion == "dead_letter")


def test_scheduler_step_leaves_running_jobs_alone(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body(timeout_ms=600_000))
    run(broker.fetch(["default"], worker_id="w1"))
    before = read_job(redis_client, keys, job_id)
    assert run(broker.scheduler_step()) == 0
    assert read_job(redis_client, keys, job_id) == before


def test_scheduler_step_promotes_due_and_expires_stale_jobs(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: enqueued a minute ago, one due after a second, one expiring after a second
    past = timefmt.now_ms() - MINUTE_MS
    due, stale = enqueue(body(scheduled_at="+PT1S"), body(expires_at="+PT1S"), now_ms=past)
    assert read_job(redis_client, keys, due)["state"] == "scheduled"
    # When
    run(broker.scheduler_step())
    # Then
    assert read_job(redis_client, keys, due)["state"] == "available"
    job = read_job(redis_client, keys, stale)
    assert job["state"] == "discarded" and "completed_at" not in job


def test_scheduler_step_failure_is_guarded_by_the_attempt_it_read(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an overdue claim listed by expired_leases.lua; before the reaper's nack lands, the
    # job is requeued (by another server's reaper) and claimed again as attempt 2
    (job_id,) = enqueue(body())
    claim_in_the_past(broker, run, visibility_ms=1_000)
    now = timefmt.now_ms()
    rows = run(broker.scripts.call("expired_leases", keys=[keys.prefix, keys.active], args=[str(now), "10"]))
    assert [(r[0].decode(), r[1]) for r in rows] == [(job_id, b"1")]
    run(broker.fail_many([Failure(job_id=job_id, verdict="requeue")], now_ms=now))
    run(broker.fetch(["default"], worker_id="w2"))
    # When: the late nack, guarded by the attempt it read, arrives
    (out,) = run(broker.fail_many(
        [Failure(job_id=job_id, verdict="lease_expired", attempt=int(rows[0][1]))], now_ms=now,
    ))
    # Then: refused as stale; attempt 2 keeps running
    assert isinstance(out, Conflict) and "stale" in str(out)
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"], job["worker_id"]) == ("active", "2", "w2")
