"""ack.lua through Broker.ack / Broker.ack_many: completion, claim guards, batch outcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime.broker.core import AckResult, Broker, Completion
from runtime.broker.keys import Keys
from runtime.envelope import ErrorInfo
from runtime.errors import Conflict, NotFound
from runtime.ids import uuid7
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]


@pytest.fixture
def claimed(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> Callable[..., str]:
    """``claimed(**options)``: enqueue one job and fetch it as worker w1; returns its id."""

    def make(**options: Any) -> str:
        (job_id,) = enqueue(body(queue="acks", **options))
        (h,) = run(broker.fetch(["acks"], worker_id="w1"))
        assert h[b"id"] == job_id.encode()
        return job_id

    return make


def test_ack_completes_active_job_with_result(
    claimed: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an active job with an error left from an earlier attempt and some progress
    job_id = claimed(expires_at="+PT1H")
    redis_client.hset(keys.job(job_id), mapping={"error": b'{"code":"x"}', "progress": "0.5"})
    # When
    done = run(broker.ack(job_id, b'{"rows": [1, 2.50, "x"]}', worker_id="w1", attempt=1))
    # Then
    job = read_job(redis_client, keys, job_id)
    assert done == AckResult(job_id, int(job["completed_at"]), job["queue"], job["type"])
    assert job["state"] == "completed"
    assert job["result"] == '{"rows": [1, 2.50, "x"]}'  # stored exactly as sent
    assert job["progress"] == "1.0"
    for gone in ("error", "visible_until", "exec_deadline", "next_attempt_at"):
        assert gone not in job
    assert redis_client.zscore(keys.active, job_id) is None
    assert redis_client.zscore(keys.expiring, job_id) is None
    assert not redis_client.sismember(keys.worker_jobs("w1"), job_id)
    assert redis_client.hget(keys.counts("acks"), "completed") == b"1"
    assert redis_client.xrange(keys.events)[-1][1][b"type"] == b"job.completed"


def test_ack_without_result_stores_none(
    claimed: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    job_id = claimed()
    run(broker.ack(job_id))
    assert "result" not in read_job(redis_client, keys, job_id)


def test_ack_rejects_job_not_active(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    (job_id,) = enqueue(body())
    with pytest.raises(Conflict) as err:
        run(broker.ack(job_id))
    assert err.value.details == {"state": "available"}


def test_ack_rejects_second_ack(claimed: Callable[..., str], broker: Broker, run: Run[Any]) -> None:
    job_id = claimed()
    run(broker.ack(job_id))
    with pytest.raises(Conflict) as err:
        run(broker.ack(job_id))
    assert err.value.details == {"state": "completed"}


def test_ack_of_missing_job_is_not_found(broker: Broker, run: Run[Any]) -> None:
    with pytest.raises(NotFound):
        run(broker.ack(uuid7()))


@pytest.mark.parametrize(("worker_id", "attempt"), [("w2", None), ("w1", 2), (None, 7)])
def test_ack_with_stale_claim_is_conflict_and_job_stays_active(
    claimed: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    worker_id: str | None, attempt: int | None,
) -> None:
    # Given
    job_id = claimed()
    before = read_job(redis_client, keys, job_id)
    # When
    with pytest.raises(Conflict, match="stale"):
        run(broker.ack(job_id, b"1", worker_id=worker_id, attempt=attempt))
    # Then: nothing moved
    assert read_job(redis_client, keys, job_id) == before
    assert redis_client.zscore(keys.active, job_id) is not None


def test_ack_without_claim_details_is_accepted(
    claimed: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # The guard applies only when both sides name a worker (spec: clients often omit it).
    job_id = claimed()
    run(broker.ack(job_id))
    assert read_job(redis_client, keys, job_id)["state"] == "completed"


def test_ack_of_previous_attempt_is_stale_after_requeue(
    claimed: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: attempt 1 requeued and claimed again as attempt 2 by the same worker
    job_id = claimed()
    run(broker.nack(job_id, ErrorInfo(message="boom"), requeue=True))
    run(broker.fetch(["acks"], worker_id="w1"))
    # When / Then: the late ack of attempt 1 is refused, attempt 2's is accepted
    with pytest.raises(Conflict):
        run(broker.ack(job_id, worker_id="w1", attempt=1))
    run(broker.ack(job_id, worker_id="w1", attempt=2))
    assert read_job(redis_client, keys, job_id)["state"] == "completed"


def test_ack_many_reports_each_outcome_in_one_call(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: three active jobs of w1, one available job, one unknown id
    ok1, ok2, stale = enqueue(body(), body(), body())
    run(broker.fetch(["default"], count=3, worker_id="w1"))
    (idle,) = enqueue(body())
    missing = uuid7()
    # When: one ack.lua call for all five, one of them with the wrong worker
    items = [
        Completion(job_id=ok1, result=b"1", worker_id="w1", attempt=1),
        Completion(job_id=idle),
        Completion(job_id=stale, worker_id="w9"),
        Completion(job_id=missing),
        Completion(job_id=ok2, result=b'"two"'),
    ]
    out = run(broker.ack_many(items))
    # Then: each job gets its own outcome; the failures do not stop the others
    assert [type(o) for o in out] == [AckResult, Conflict, Conflict, NotFound, AckResult]
    assert isinstance(out[1], Conflict) and out[1].details == {"state": "available"}
    assert "stale" in str(out[2])
    assert read_job(redis_client, keys, ok1)["result"] == "1"
    assert read_job(redis_client, keys, ok2)["result"] == '"two"'
    assert read_job(redis_client, keys, stale)["state"] == "active"
    assert redis_client.smembers(keys.worker_jobs("w1")) == {stale.encode()}
    assert redis_client.hget(keys.counts("default"), "completed") == b"2"
