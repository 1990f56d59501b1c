"""Fencing tokens: every claim gets its own token, and a pool's settles, heartbeats and progress
writes are refused once the claim they name is no longer the job's current one.

The (worker id, attempt) pair is not enough: a release gives the attempt back, so the same pool's
next claim of the job has the same pair, and a re-sent release would hand back the job that now
runs (another pool then runs it too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime.broker.admin import Admin
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.keys import Keys
from runtime.errors import Conflict
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]


def claim_of(fields: dict[bytes, bytes]) -> str:
    return fields[b"claim"].decode()


def claimed_twice(enqueue: Enqueue, broker: Broker, run: Run[Any], **fetch: Any) -> tuple[str, dict[bytes, bytes], dict[bytes, bytes]]:
    """A job claimed by w1, released, and claimed by w1 again: (id, first claim, second claim)."""
    (job_id,) = enqueue(body())
    (first,) = run(broker.fetch(["default"], worker_id="w1", **fetch))
    run(broker.fail_many([Failure(job_id=job_id, verdict="release", worker_id="w1", claim=claim_of(first))],
                         now_ms=0))
    (second,) = run(broker.fetch(["default"], worker_id="w1", **fetch))
    return job_id, first, second


def test_every_claim_gets_a_new_token(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    ids = enqueue(body(), body(), body())
    first = run(broker.fetch(["default"], count=3, worker_id="w1"))
    tokens = [claim_of(h) for h in first]
    assert len(set(tokens)) == 3
    run(broker.fail_many([Failure(job_id=ids[0], verdict="release", worker_id="w1", claim=tokens[0])],
                         now_ms=0))
    (again,) = run(broker.fetch(["default"], worker_id="w1"))
    assert again[b"id"].decode() == ids[0]
    assert claim_of(again) not in tokens


def test_resent_release_of_an_earlier_claim_is_refused(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: w1 claims a job, releases it, and claims it again (same worker, same attempt)
    (job_id,) = enqueue(body())
    (first,) = run(broker.fetch(["default"], worker_id="w1"))
    release = Failure(job_id=job_id, verdict="release", worker_id="w1",
                      attempt=int(first[b"attempt"]), claim=claim_of(first))
    run(broker.fail_many([release], now_ms=0))
    (second,) = run(broker.fetch(["default"], worker_id="w1"))
    assert second[b"attempt"] == first[b"attempt"]
    # When: the first release is sent again (a batcher retry after a lost reply)
    (outcome,) = run(broker.fail_many([release], now_ms=0))
    # Then: it is refused, and the job that now runs stays with its claim
    assert isinstance(outcome, Conflict)
    job = read_job(redis_client, keys, job_id)
    assert job["state"] == "active"
    assert job["claim"] == claim_of(second)


def test_a_late_release_of_a_run_that_ended_before_a_dead_letter_retry_is_refused(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a one-attempt job whose run lost its lease and was dead-lettered, then retried from
    # the dead letter queue (attempt back to 0: the old claim's attempt less one)
    (job_id,) = enqueue(body(retry={"max_attempts": 1, "on_exhaustion": "dead_letter"}))
    (first,) = run(broker.fetch(["default"], worker_id="w1"))
    lapsed = Failure(job_id=job_id, verdict="lease_expired", worker_id="w1", claim=claim_of(first))
    run(broker.fail_many([lapsed], now_ms=int(first[b"visible_until"]) + 1))
    assert read_job(redis_client, keys, job_id)["state"] == "discarded"
    run(Admin(broker).dead_letter_retry(job_id))
    # When: the old run's pool, never told, hands its claim back
    release = Failure(job_id=job_id, verdict="release", worker_id="w1", attempt=int(first[b"attempt"]),
                      claim=claim_of(first))
    (outcome,) = run(broker.fail_many([release], now_ms=int(first[b"visible_until"]) + 2))
    # Then: it is refused (it is no resend of a release that was applied), and nothing changes
    assert isinstance(outcome, Conflict)
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"]) == ("available", "0")


def test_ack_of_a_superseded_claim_is_refused(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    job_id, first, second = claimed_twice(enqueue, broker, run)
    (stale,) = run(broker.ack_many([Completion(job_id=job_id, worker_id="w1",
                                               attempt=int(first[b"attempt"]), claim=claim_of(first))]))
    assert isinstance(stale, Conflict)
    (fresh,) = run(broker.ack_many([Completion(job_id=job_id, worker_id="w1", claim=claim_of(second))]))
    assert not isinstance(fresh, Exception)
    assert read_job(redis_client, keys, job_id)["state"] == "completed"


def test_heartbeat_for_a_superseded_claim_does_not_extend(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    job_id, first, second = claimed_twice(enqueue, broker, run, visibility_ms=1_000)
    before = read_job(redis_client, keys, job_id)["visible_until"]
    stale = run(broker.heartbeat("w1", [job_id], claims=[claim_of(first)], visibility_ms=60_000))
    assert stale.extended == []
    assert read_job(redis_client, keys, job_id)["visible_until"] == before
    fresh = run(broker.heartbeat("w1", [job_id], claims=[claim_of(second)], visibility_ms=60_000))
    assert fresh.extended == [job_id]


def test_progress_for_a_superseded_claim_is_refused(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    job_id, first, second = claimed_twice(enqueue, broker, run)
    with pytest.raises(Conflict):
        run(broker.progress(job_id, value=0.5, checkpoint=b'{"step":1}', claim=claim_of(first)))
    job = read_job(redis_client, keys, job_id)
    assert "checkpoint" not in job and "progress" not in job
    run(broker.progress(job_id, value=0.5, claim=claim_of(second)))
    assert read_job(redis_client, keys, job_id)["progress"] == "0.5"


def test_heartbeat_never_shortens_a_lease(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job with its own 10 minute visibility timeout, claimed by a pool whose lease is 60 s
    (job_id,) = enqueue(body(visibility_timeout_ms=600_000))
    (claimed,) = run(broker.fetch(["default"], worker_id="w1", visibility_ms=60_000))
    granted = int(read_job(redis_client, keys, job_id)["visible_until"])
    # When: the pool's first beat asks for its 60 s
    beat = run(broker.heartbeat("w1", [job_id], claims=[claim_of(claimed)], visibility_ms=60_000))
    # Then: the lease is still the one granted at the claim
    assert beat.extended == [job_id]
    assert int(read_job(redis_client, keys, job_id)["visible_until"]) == granted
    assert redis_client.zscore(keys.active, job_id) == granted


def test_progress_never_shortens_a_lease(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1", visibility_ms=3_600_000))
    granted = read_job(redis_client, keys, job_id)["visible_until"]
    run(broker.progress(job_id, value=0.1))
    assert read_job(redis_client, keys, job_id)["visible_until"] == granted


def test_the_reaper_leaves_a_lease_renewed_after_it_listed_the_job(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: the reaper lists a job whose lease lapsed
    (job_id,) = enqueue(body())
    (claimed,) = run(broker.fetch(["default"], worker_id="w1", visibility_ms=1_000))
    lapsed = int(claimed[b"visible_until"]) + 1
    (row,) = run(broker.scripts.call("expired_leases", keys=[keys.prefix, keys.active], args=[str(lapsed), "10"]))
    overdue = broker._overdue_failure(row, lapsed)
    # When: its worker's heartbeat lands before the reaper's nack
    run(broker.heartbeat("w1", [job_id], claims=[claim_of(claimed)], visibility_ms=60_000))
    (outcome,) = run(broker.fail_many([overdue], now_ms=lapsed))
    # Then: the renewed claim keeps running
    assert isinstance(outcome, Conflict)
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["claim"], job["attempt"]) == ("active", claim_of(claimed), "1")


def test_a_failover_that_loses_claims_never_hands_out_their_tokens_again(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job claimed on a primary whose last writes a failover then loses: the promoted
    # replica has the job available again and the claim counter as it was before that claim
    (job_id,) = enqueue(body())
    counter_before = redis_client.get(keys.prefix + "claims")
    now = int(time.time() * 1000)
    (lost,) = run(broker.fetch(["default"], worker_id="w1", now_ms=now))
    run(broker.fail_many([Failure(job_id=job_id, verdict="release", worker_id="w1", claim=claim_of(lost))],
                         now_ms=now))
    if counter_before is None:
        redis_client.delete(keys.prefix + "claims")
    else:
        redis_client.set(keys.prefix + "claims", counter_before)
    # When: the same worker claims it on the new primary, a few seconds later
    (again,) = run(broker.fetch(["default"], worker_id="w1", now_ms=now + 3_000))
    # Then: the new claim's token is not the lost one's, so the lost run's ack (same worker, same
    # attempt) is refused instead of completing the run that holds the job now
    assert claim_of(again) != claim_of(lost)
    lost_ack = Completion(job_id=job_id, worker_id="w1", attempt=int(lost[b"attempt"]), claim=claim_of(lost))
    (outcome,) = run(broker.ack_many([lost_ack]))
    assert isinstance(outcome, Conflict)
