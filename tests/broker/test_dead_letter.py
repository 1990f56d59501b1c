"""dlq_retry.lua and dlq_delete.lua through Admin: dead-lettered jobs back to work, or gone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.broker.render import error_history
from runtime.envelope import ErrorInfo
from runtime.errors import NotFound
from runtime.ids import uuid7
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]


@pytest.fixture
def dead_lettered(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> Callable[..., str]:
    """``dead_lettered(**options)``: a job in queue "dl" that failed once with DEAD_LETTER."""

    def make(**options: Any) -> str:
        (job_id,) = enqueue(body(queue="dl", **options))
        run(broker.fetch(["dl"], worker_id="w1"))
        out = run(broker.nack(job_id, ErrorInfo(message="poison", code="DEAD_LETTER")))
        assert out.state == "discarded"
        return job_id

    return make


def test_dead_letter_retry_makes_job_available_with_fresh_budget(
    dead_lettered: Callable[..., str], admin: Admin, broker: Broker, run: Run[Any],
    redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given
    job_id = dead_lettered()
    # When
    run(admin.dead_letter_retry(job_id))
    # Then: available, attempt 0, failure fields cleared, history kept, out of the DLQ
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"]) == ("available", "0")
    for gone in ("error", "completed_at", "discarded_at", "retry_delay_ms", "next_attempt_at",
                 "dead_lettered", "worker_id", "started_at"):
        assert gone not in job
    assert len(error_history(redis_client.hgetall(keys.job(job_id)))) == 1
    assert redis_client.zscore(keys.dlq, job_id) is None
    assert redis_client.zscore(keys.available("dl"), job_id) is not None
    assert redis_client.hget(keys.counts("dl"), "discarded") == b"0"
    # And it runs again from attempt 1
    (h,) = run(broker.fetch(["dl"]))
    assert (h[b"id"], h[b"attempt"]) == (job_id.encode(), b"1")


def test_dead_letter_retry_rejects_job_not_dead_lettered(
    enqueue: Enqueue, admin: Admin, broker: Broker, run: Run[Any]
) -> None:
    # Given: a job discarded without dead-lettering, and an available one
    plain, idle = enqueue(body(), body())
    run(broker.fetch(["default"]))
    run(broker.nack(plain, ErrorInfo(message="m", code="DISCARD")))
    # When / Then
    for job_id in (plain, idle, uuid7()):
        with pytest.raises(NotFound):
            run(admin.dead_letter_retry(job_id))


def test_dead_letter_delete_removes_job_and_its_count(
    dead_lettered: Callable[..., str], admin: Admin, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given
    job_id, kept = dead_lettered(), dead_lettered()
    # When
    run(admin.dead_letter_delete(job_id))
    # Then
    assert not redis_client.exists(keys.job(job_id))
    assert [m.decode() for m in redis_client.zrange(keys.dlq, 0, -1)] == [kept]
    assert redis_client.hget(keys.counts("dl"), "discarded") == b"1"
    with pytest.raises(NotFound):
        run(admin.dead_letter_delete(job_id))


def test_dead_letter_page_lists_oldest_first_and_filters_by_queue(
    dead_lettered: Callable[..., str], enqueue: Enqueue, admin: Admin, broker: Broker, run: Run[Any]
) -> None:
    first, second = dead_lettered(), dead_lettered()
    (elsewhere,) = enqueue(body(queue="other", retry={"on_exhaustion": "dead_letter", "max_attempts": 1}))
    run(broker.fetch(["other"]))
    run(broker.nack(elsewhere, ErrorInfo(message="m")))
    total, page = run(admin.dead_letter_page(queue=None, limit=10, offset=0))
    assert total == 3
    assert {h[b"id"].decode() for h in page} == {first, second, elsewhere}
    total, page = run(admin.dead_letter_page(queue="dl", limit=1, offset=1))
    assert total == 2 and [h[b"id"].decode() for h in page] == [second]


def test_dead_letter_retry_of_expiring_job_keeps_store_consistent(
    dead_lettered: Callable[..., str], admin: Admin, broker: Broker, run: Run[Any], allow_inconsistency: None
) -> None:
    job_id = dead_lettered(expires_at="+PT1H")
    run(admin.dead_letter_retry(job_id))
    assert run(check_integrity(broker.redis, broker.keys)) == []
