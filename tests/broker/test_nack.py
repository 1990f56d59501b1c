"""nack.lua through Broker.nack / Broker.fail_many: verdicts, backoff, history, exhaustion, DLQ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker, Failure, NackResult
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.broker.render import error_history
from runtime.envelope import ErrorInfo
from runtime.errors import Conflict, NotFound
from runtime.ids import uuid7
from tests.broker.conftest import Run, body, no_jitter, read_job

Enqueue = Callable[..., list[str]]
DAY_MS = 86_400_000
BOOM = ErrorInfo(message="boom", type="BoomError")


@pytest.fixture
def cycle(broker: Broker, run: Run[Any]) -> Callable[..., NackResult]:
    """``cycle(job_id, error)``: claim the job (at a time when any retry is due) and fail it."""

    def go(job_id: str, error: ErrorInfo | None = BOOM, **kwargs: Any) -> NackResult:
        (h,) = run(broker.fetch(["default"], worker_id="w1", now_ms=timefmt.now_ms() + DAY_MS))
        assert h[b"id"] == job_id.encode()
        return run(broker.nack(job_id, error, worker_id="w1", **kwargs))

    return go


@pytest.mark.parametrize(("policy", "expected_ms"), [
    ({"initial_interval": "PT1S", "backoff_coefficient": 2.0}, [1000, 2000, 4000]),
    ({"initial_interval": "PT1S", "backoff_coefficient": 1.0}, [1000, 1000, 1000]),
    ({"initial_interval": "PT1S", "backoff_strategy": "linear"}, [1000, 2000, 3000]),
    ({"initial_interval": "PT1S", "backoff_strategy": "constant"}, [1000, 1000, 1000]),
    ({"initial_interval_ms": 500, "backoff_coefficient": 2.0, "backoff_strategy": "polynomial"}, [500, 2000, 4500]),
    ({"initial_interval": "PT1S", "backoff_coefficient": 10.0, "max_interval": "PT2S"}, [1000, 2000, 2000]),
], ids=["exponential", "coefficient-1", "linear", "constant", "polynomial", "max-cap"])
def test_nack_retry_backoff_follows_policy(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys,
    policy: dict[str, Any], expected_ms: list[int],
) -> None:
    # Given
    (job_id,) = enqueue(body(retry=no_jitter(max_attempts=10, **policy)))
    for attempt, delay in enumerate(expected_ms, start=1):
        # When
        out = cycle(job_id)
        # Then
        assert (out.state, out.attempt, out.retry_delay_ms) == ("retryable", attempt, delay)
        assert out.next_attempt_ms == out.now_ms + delay
        job = read_job(redis_client, keys, job_id)
        assert job["retry_delay_ms"] == str(delay)
        assert job["next_attempt_at"] == str(out.next_attempt_ms)
        assert "completed_at" not in job
        assert redis_client.zscore(keys.delayed, job_id) == out.next_attempt_ms


def test_nack_retry_jitter_stays_within_bounds(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: 30 jobs with I = 2 s and jitter on, each failing at attempt 1
    ids = enqueue(*(body(retry={"initial_interval": "PT2S", "jitter": True}) for _ in range(30)))
    run(broker.fetch(["default"], count=30))
    # When
    delays = [run(broker.nack(i, BOOM)).retry_delay_ms for i in ids]
    # Then: within [0.5, 1.5) of 2 s, and actually varied
    assert all(d is not None and 1000 <= d <= 3000 for d in delays), delays
    assert len(set(delays)) > 1


def test_nack_retry_jitter_never_exceeds_max_interval(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    ids = enqueue(*(body(retry={"initial_interval": "PT2S", "max_interval": "PT2S"}) for _ in range(20)))
    run(broker.fetch(["default"], count=20))
    delays = [run(broker.nack(i, BOOM)).retry_delay_ms for i in ids]
    assert all(d is not None and 1000 <= d <= 2000 for d in delays), delays


@pytest.mark.parametrize(("patterns", "error", "state"), [
    (["ValidationError"], ErrorInfo(message="m", type="ValidationError"), "discarded"),
    (["ValidationError"], ErrorInfo(message="m", type="ValidationErrorX"), "retryable"),
    (["auth.*"], ErrorInfo(message="m", type="auth.token_expired"), "discarded"),
    (["auth.*"], ErrorInfo(message="m", type="auth"), "retryable"),
    (["*Error"], ErrorInfo(message="m", type="KeyError"), "discarded"),
    (["Key*"], ErrorInfo(message="m", details={"error_class": "KeyError"}), "discarded"),
    ([], ErrorInfo(message="m", type="KeyError", retryable=False), "discarded"),
], ids=["exact", "exact-miss", "prefix", "prefix-needs-dot", "glob", "details-class", "retryable-false"])
def test_nack_non_retryable_errors_discard_at_once(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys,
    patterns: list[str], error: ErrorInfo, state: str,
) -> None:
    (job_id,) = enqueue(body(retry={"max_attempts": 5, "non_retryable_errors": patterns}))
    out = cycle(job_id, error)
    assert (out.state, out.attempt) == (state, 1)
    assert redis_client.zscore(keys.dlq, job_id) is None


def test_nack_non_retryable_follows_on_exhaustion(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body(retry={"max_attempts": 5, "on_exhaustion": "dead_letter"}))
    assert cycle(job_id, ErrorInfo(message="m", retryable=False)).state == "discarded"
    assert redis_client.zscore(keys.dlq, job_id) is not None


@pytest.mark.parametrize(("error", "on_exhaustion", "dead_lettered"), [
    (ErrorInfo(message="m", code="DISCARD"), "dead_letter", False),
    (ErrorInfo(message="m", code="FAIL"), "dead_letter", False),
    (ErrorInfo(message="m", response_code="discard"), "dead_letter", False),
    (ErrorInfo(message="m", code="DEAD_LETTER"), "discard", True),
])
def test_nack_handler_codes_decide_dead_lettering(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys,
    error: ErrorInfo, on_exhaustion: str, dead_lettered: bool,
) -> None:
    # Given: plenty of attempts left
    (job_id,) = enqueue(body(retry={"max_attempts": 5, "on_exhaustion": on_exhaustion}))
    # When
    out = cycle(job_id, error)
    # Then: discarded at once; in the DLQ only for DEAD_LETTER
    assert (out.state, out.attempt) == ("discarded", 1)
    job = read_job(redis_client, keys, job_id)
    assert job["discarded_at"] == job["completed_at"] == str(out.now_ms)
    assert (redis_client.zscore(keys.dlq, job_id) is not None) is dead_lettered


def test_nack_requeue_makes_job_available_without_backoff(
    enqueue: Enqueue, broker: Broker, run: Run[Any], cycle: Callable[..., NackResult],
    redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given / When
    (job_id,) = enqueue(body(retry={"max_attempts": 1}))
    out = cycle(job_id, BOOM, requeue=True)
    # Then: available now, the attempt kept, the error recorded, the claim cleared
    assert (out.state, out.attempt, out.retry_delay_ms) == ("available", 1, None)
    job = read_job(redis_client, keys, job_id)
    assert job["enqueued_at"] == str(out.now_ms)
    assert "started_at" not in job and "worker_id" not in job
    assert b'"attempt":1' in redis_client.hget(keys.job(job_id), "error")
    assert redis_client.zscore(keys.available("default"), job_id) is not None
    # And even with max_attempts 1 it can be fetched again, as attempt 2
    (h,) = run(broker.fetch(["default"]))
    assert h[b"attempt"] == b"2"


@pytest.mark.parametrize(("on_exhaustion", "in_dlq"), [("discard", False), ("dead_letter", True)])
def test_nack_exhaustion_discards_and_dead_letters_only_when_asked(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys,
    on_exhaustion: str, in_dlq: bool,
) -> None:
    # Given: two attempts
    (job_id,) = enqueue(body(retry=no_jitter(max_attempts=2, on_exhaustion=on_exhaustion)))
    # When / Then: the first failure retries, the second discards
    assert cycle(job_id).state == "retryable"
    out = cycle(job_id)
    assert (out.state, out.attempt, out.max_attempts) == ("discarded", 2, 2)
    job = read_job(redis_client, keys, job_id)
    assert job["completed_at"] == job["discarded_at"] == str(out.now_ms)
    assert "next_attempt_at" not in job or redis_client.zscore(keys.delayed, job_id) is None
    assert (redis_client.zscore(keys.dlq, job_id) is not None) is in_dlq
    assert (job.get("dead_lettered") == "1") is in_dlq


def test_nack_max_attempts_one_discards_on_first_failure(
    enqueue: Enqueue, cycle: Callable[..., NackResult]
) -> None:
    (job_id,) = enqueue(body(retry={"max_attempts": 1}))
    assert cycle(job_id).state == "discarded"


def test_nack_error_history_keeps_last_twenty_with_attempts(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job that fails 22 times
    (job_id,) = enqueue(body(retry=no_jitter(max_attempts=50, backoff_strategy="constant")))
    for n in range(1, 23):
        cycle(job_id, ErrorInfo(message=f"failure {n}", code="handler_error"))
    # When
    h = redis_client.hgetall(keys.job(job_id))
    history = [msgspec.json.decode(bytes(raw)) for raw in error_history(h)]
    # Then: attempts 3..22 in order, the oldest two dropped from the hash too
    assert [e["attempt"] for e in history] == list(range(3, 23))
    assert [e["message"] for e in history] == [f"failure {n}" for n in range(3, 23)]
    assert b"e1" not in h and b"e2" not in h
    assert msgspec.json.decode(h[b"error"])["attempt"] == 22
    assert {"code", "type", "message", "occurred_at"} <= history[-1].keys()


def test_nack_without_error_retries_and_records_nothing(
    enqueue: Enqueue, cycle: Callable[..., NackResult], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body(retry=no_jitter()))
    assert cycle(job_id, None).state == "retryable"
    assert not redis_client.hexists(keys.job(job_id), "error")


def test_nack_rejects_job_not_active(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    (job_id,) = enqueue(body())
    with pytest.raises(Conflict):
        run(broker.nack(job_id, BOOM))
    with pytest.raises(NotFound):
        run(broker.nack(uuid7(), BOOM))


def test_nack_with_stale_claim_leaves_job_active(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1"))
    before = read_job(redis_client, keys, job_id)
    for worker_id, attempt in (("w2", None), ("w1", 3)):
        with pytest.raises(Conflict, match="stale"):
            run(broker.nack(job_id, BOOM, worker_id=worker_id, attempt=attempt))
    assert read_job(redis_client, keys, job_id) == before


def test_fail_many_release_gives_the_attempt_back(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1"))
    (out,) = run(broker.fail_many([Failure(job_id=job_id, verdict="release", worker_id="w1")],
                                  now_ms=timefmt.now_ms()))
    assert isinstance(out, NackResult) and (out.state, out.attempt) == ("available", 0)
    assert read_job(redis_client, keys, job_id)["attempt"] == "0"


def test_fail_many_worker_lost_dead_letters_at_the_cap(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job that keeps killing its worker (running alone), with attempts to spare
    (job_id,) = enqueue(body(retry={"max_attempts": 10}))
    cap = broker.settings.worker_lost_cap
    states = []
    for _ in range(cap):
        (claimed,) = run(broker.fetch(["default"], worker_id="w1", idle=True))  # a suspect after the first
        assert claimed[b"id"] == job_id.encode()
        (out,) = run(broker.fail_many([Failure(job_id=job_id, verdict="worker_lost")], now_ms=timefmt.now_ms()))
        assert isinstance(out, NackResult)
        states.append(out.state)
    # Then: requeued until the cap, then dead-lettered
    assert states == ["available"] * (cap - 1) + ["discarded"]
    assert redis_client.zscore(keys.dlq, job_id) is not None


@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "retry"])
def test_nack_job_past_its_expiry_is_not_fetchable_again(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    allow_inconsistency: None, requeue: bool,
) -> None:
    # Given: a job claimed before its expiry, with a scheduler step running after the expiry
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(expires_at="+PT1M", retry=no_jitter(initial_interval_ms=1)), now_ms=now)
    run(broker.fetch(["default"], now_ms=now))
    run(broker.fetch([], count=0, now_ms=now + 120_000))
    # When: the worker gives it back
    run(broker.nack(job_id, BOOM, requeue=requeue))
    # Then: the store is consistent, and once past its expiry the job is not handed out again
    assert run(check_integrity(broker.redis, keys)) == []
    assert run(broker.fetch(["default"], now_ms=now + 121_000)) == []
    assert read_job(redis_client, keys, job_id)["state"] == "discarded"
