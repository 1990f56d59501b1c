"""heartbeat.lua through Broker.heartbeat: lease extension, cancellation news, directives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]


def test_heartbeat_extends_lease_of_holding_worker(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job leased for one second
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1", visibility_ms=1_000))
    # When
    before = timefmt.now_ms()
    beat = run(broker.heartbeat("w1", [job_id], visibility_ms=60_000))
    # Then
    assert beat.extended == [job_id]
    visible_until = int(read_job(redis_client, keys, job_id)["visible_until"])
    assert before + 60_000 <= visible_until <= timefmt.now_ms() + 60_000
    assert redis_client.zscore(keys.active, job_id) == visible_until


def test_heartbeat_does_not_extend_another_workers_job(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1", visibility_ms=1_000))
    before = read_job(redis_client, keys, job_id)
    beat = run(broker.heartbeat("w2", [job_id], visibility_ms=60_000))
    assert (beat.extended, beat.cancelled) == ([], [])
    assert read_job(redis_client, keys, job_id) == before


def test_heartbeat_keeps_execution_deadline(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job with a 5 s execution timeout
    (job_id,) = enqueue(body(timeout_ms=5_000))
    run(broker.fetch(["default"], worker_id="w1"))
    # When: the lease is extended far past it
    run(broker.heartbeat("w1", [job_id], visibility_ms=600_000))
    # Then: the active-set score stays at the execution deadline
    job = read_job(redis_client, keys, job_id)
    assert redis_client.zscore(keys.active, job_id) == int(job["exec_deadline"])
    assert int(job["visible_until"]) > int(job["exec_deadline"])


def test_heartbeat_uses_job_visibility_when_request_has_none(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body(visibility_timeout_ms=45_000))
    run(broker.fetch(["default"], worker_id="w1"))
    before = timefmt.now_ms()
    run(broker.heartbeat("w1", [job_id]))
    visible_until = int(read_job(redis_client, keys, job_id)["visible_until"])
    assert before + 45_000 <= visible_until <= timefmt.now_ms() + 45_000


def test_heartbeat_reports_cancelled_jobs_and_ignores_others(
    enqueue: Enqueue, broker: Broker, run: Run[Any]
) -> None:
    # Given: w1 holds two jobs; one is cancelled, and it also lists a finished and an idle job
    running, cancelled, done = enqueue(body(), body(), body())
    run(broker.fetch(["default"], count=3, worker_id="w1"))
    run(broker.cancel(cancelled))
    run(broker.ack(done))
    (idle,) = enqueue(body())
    # When
    beat = run(broker.heartbeat("w1", [running, cancelled, done, idle]))
    # Then
    assert (beat.directive, beat.extended, beat.cancelled) == ("running", [running], [cancelled])


def test_heartbeat_returns_test_directive_hook(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    (job_id,) = enqueue({"type": "test.job", "args": [], "meta": {"test_directive": "quiet"}})
    run(broker.fetch(["default"], worker_id="w1"))
    assert run(broker.heartbeat("w1", [job_id])).directive == "quiet"


def test_heartbeat_stored_operator_directive_wins(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an operator directive on the worker, and a job carrying the test hook
    (job_id,) = enqueue({"type": "test.job", "args": [], "meta": {"test_directive": "quiet"}})
    run(broker.fetch(["default"], worker_id="w1"))
    redis_client.hset(keys.worker("w1"), "directive", "terminate")
    # When / Then
    assert run(broker.heartbeat("w1", [job_id])).directive == "terminate"


def test_heartbeat_registers_worker(broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys) -> None:
    # When
    run(broker.heartbeat("w1", [], state="running", active_count=4))
    # Then
    worker = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.worker("w1")).items()}
    assert (worker["id"], worker["state"], worker["active_jobs"]) == ("w1", "running", "4")
    assert redis_client.zscore(keys.workers, "w1") == int(worker["last_heartbeat_at"])
    assert worker["started_at"] == worker["last_heartbeat_at"]


def test_heartbeat_worker_ids_cannot_collide_with_held_job_sets(
    enqueue: Enqueue, broker: Broker, run: Run[Any]
) -> None:
    # Given: worker w1 holds a job
    enqueue(body())
    run(broker.fetch(["default"], worker_id="w1"))
    # When: a worker whose id is "w1:jobs" beats
    beat = run(broker.heartbeat("w1:jobs", []))
    # Then
    assert beat.directive == "running"


def test_fetch_claim_survives_worker_id_collision(
    enqueue: Enqueue, broker: Broker, run: Run[Any], allow_inconsistency: None
) -> None:
    # Given: a worker whose id is "w1:jobs" has registered
    run(broker.heartbeat("w1:jobs", []))
    enqueue(body())
    # When: worker w1 claims
    try:
        run(broker.fetch(["default"], worker_id="w1"))
    except redis.ResponseError:
        pass  # refusing the claim would be acceptable; half-applying it is not
    # Then
    assert run(check_integrity(broker.redis, broker.keys)) == []
