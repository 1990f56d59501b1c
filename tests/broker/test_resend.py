"""A settle sent again after its reply was lost (the pool cannot know whether the first send
ran) counts as done when the first one did: the job is in the state that very settle left it,
under the same claim. Anything else stays a conflict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import AckResult, Broker, Completion, Failure, NackResult
from runtime.broker.keys import Keys
from runtime.envelope import ErrorInfo
from runtime.errors import Conflict
from tests.broker.conftest import Run, body, no_jitter, read_job

Enqueue = Callable[..., list[str]]


def claimed(enqueue: Enqueue, broker: Broker, run: Run[Any], **options: Any) -> tuple[str, dict[bytes, bytes]]:
    (job_id,) = enqueue(body(**options))
    (fields,) = run(broker.fetch(["default"], worker_id="w1"))
    return job_id, fields


def test_resent_ack_of_the_completed_claim_is_done(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    job_id, fields = claimed(enqueue, broker, run)
    ack = Completion(job_id=job_id, result=b"7", worker_id="w1", attempt=1, claim=fields[b"claim"].decode())
    (first,) = run(broker.ack_many([ack]))
    # When: the same ack arrives again
    (again,) = run(broker.ack_many([ack]))
    # Then: done, with the labels the metrics need; the job was completed once
    assert isinstance(first, AckResult) and isinstance(again, AckResult)
    assert (again.queue, again.type) == ("default", "test.job")
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["result"]) == ("completed", "7")
    # But an ack naming another claim, or none, is still refused
    (other,) = run(broker.ack_many([Completion(job_id=job_id, worker_id="w1", claim="not-the-claim")]))
    (blind,) = run(broker.ack_many([Completion(job_id=job_id, worker_id="w1")]))
    assert isinstance(other, Conflict) and isinstance(blind, Conflict)


def test_resent_release_is_done_until_the_job_is_claimed_again(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    job_id, fields = claimed(enqueue, broker, run)
    release = Failure(job_id=job_id, verdict="release", worker_id="w1", attempt=1, claim=fields[b"claim"].decode())
    (first,) = run(broker.fail_many([release], now_ms=timefmt.now_ms()))
    (again,) = run(broker.fail_many([release], now_ms=timefmt.now_ms()))
    assert isinstance(first, NackResult) and isinstance(again, NackResult)
    assert (again.state, again.attempt) == ("available", 0)
    assert read_job(redis_client, keys, job_id)["attempt"] == "0"  # given back once, not twice


def test_lease_expiry_of_the_claim_is_not_taken_for_its_release(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    # Given: the reaper requeued the claim (attempt kept) once its lease lapsed, not the pool's
    # release
    job_id, fields = claimed(enqueue, broker, run)
    token = fields[b"claim"].decode()
    lapsed = int(fields[b"visible_until"]) + 1
    expired = failures.server_error("visibility_timeout", "timeout", "Lease expired", lapsed)
    run(broker.fail_many([Failure(job_id=job_id, verdict="lease_expired", error=expired, worker_id="w1",
                                  attempt=1, claim=token)], now_ms=lapsed))
    # When: the pool's release of that claim arrives
    (late,) = run(broker.fail_many([Failure(job_id=job_id, verdict="release", worker_id="w1", attempt=1,
                                            claim=token)], now_ms=timefmt.now_ms()))
    # Then: refused: it did not happen
    assert isinstance(late, Conflict)


def test_resent_retry_is_done_only_with_its_own_error(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    job_id, fields = claimed(enqueue, broker, run, retry=no_jitter(max_attempts=3, initial_interval="PT1H",
                                                                      max_interval="PT1H"))
    token = fields[b"claim"].decode()
    error = failures.error_record(ErrorInfo(code="handler_error", type="Boom", message="boom"), timefmt.now_ms())
    retry = Failure(job_id=job_id, verdict="retry", error=error, worker_id="w1", attempt=1, claim=token)
    (first,) = run(broker.fail_many([retry], now_ms=timefmt.now_ms()))
    (again,) = run(broker.fail_many([retry], now_ms=timefmt.now_ms()))
    assert isinstance(first, NackResult) and isinstance(again, NackResult)
    assert (again.state, again.retry_delay_ms, again.next_attempt_ms) == (
        "retryable", first.retry_delay_ms, first.next_attempt_ms)
    assert read_job(redis_client, keys, job_id)["nerr"] == "1"  # one error recorded, not two
    # A different failure of the same claim did not happen: refused
    other = failures.error_record(ErrorInfo(code="handler_error", type="Other", message="other"), timefmt.now_ms())
    (refused,) = run(broker.fail_many([Failure(job_id=job_id, verdict="retry", error=other, worker_id="w1",
                                               attempt=1, claim=token)], now_ms=timefmt.now_ms()))
    assert isinstance(refused, Conflict)
