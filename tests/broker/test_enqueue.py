"""enqueue.lua through Broker.enqueue: states, indexes, counters, and all-or-nothing batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.errors import Duplicate
from runtime.ids import uuid7
from tests.broker.conftest import Run, body, new_job, read_job

Enqueue = Callable[..., list[str]]


def test_enqueue_available_job_is_indexed_and_counted(
    enqueue: Enqueue, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given / When
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(queue="emails", priority=5), now_ms=now)
    # Then
    h = read_job(redis_client, keys, job_id)
    assert h["state"] == "available"
    assert h["attempt"] == "0"
    assert h["created_at"] == h["enqueued_at"] == str(now)
    assert redis_client.zscore(keys.available("emails"), job_id) is not None
    assert redis_client.hget(keys.counts("emails"), "available") == b"1"
    assert redis_client.hexists(keys.queues, "emails")


def test_enqueue_future_job_is_scheduled_at_its_due_time(
    enqueue: Enqueue, redis_client: redis.Redis, keys: Keys
) -> None:
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(scheduled_at="+PT1H"), now_ms=now)
    h = read_job(redis_client, keys, job_id)
    assert h["state"] == "scheduled"
    assert "enqueued_at" not in h
    assert redis_client.zscore(keys.delayed, job_id) == now + 3_600_000
    assert redis_client.zcard(keys.available("default")) == 0


def test_enqueue_pending_job_is_in_no_index(enqueue: Enqueue, redis_client: redis.Redis, keys: Keys) -> None:
    (job_id,) = enqueue(body(pending=True))
    assert read_job(redis_client, keys, job_id)["state"] == "pending"
    assert redis_client.zcard(keys.available("default")) == 0
    assert redis_client.zcard(keys.delayed) == 0
    assert redis_client.hget(keys.counts("default"), "pending") == b"1"


def test_enqueue_job_with_expiry_is_in_expiring(enqueue: Enqueue, redis_client: redis.Redis, keys: Keys) -> None:
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(expires_at="+PT10M"), now_ms=now)
    assert redis_client.zscore(keys.expiring, job_id) == now + 600_000
    assert read_job(redis_client, keys, job_id)["expires_ms"] == str(now + 600_000)


def test_enqueue_batch_keeps_request_order_within_one_millisecond(
    enqueue: Enqueue, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: five jobs enqueued in one call, so at one now_ms
    ids = enqueue(*(body() for _ in range(5)))
    # Then: the available set orders them as sent (the sequence, not the clock, breaks ties)
    assert [m.decode() for m in redis_client.zrange(keys.available("default"), 0, -1)] == ids


def test_enqueue_batch_with_existing_id_inserts_nothing(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job that exists
    taken = uuid7()
    enqueue({**body(), "id": taken})
    before = redis_client.hgetall(keys.counts("default"))
    # When: a batch repeats its id in the middle
    fresh = [uuid7(), uuid7()]
    batch = [new_job({**body(), "id": fresh[0]}), new_job({**body(), "id": taken}),
             new_job({**body(queue="other"), "id": fresh[1]})]
    with pytest.raises(Duplicate) as err:
        run(broker.enqueue(batch, now_ms=timefmt.now_ms()))
    # Then: the whole batch is rejected, naming the duplicate, and nothing was written
    assert err.value.details == {"job_id": taken}
    assert not any(redis_client.exists(keys.job(i)) for i in fresh)
    assert redis_client.hgetall(keys.counts("default")) == before
    assert not redis_client.exists(keys.counts("other"))
    assert redis_client.zcard(keys.available("default")) == 1


def test_enqueue_batch_repeating_one_id_is_rejected(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, allow_inconsistency: None
) -> None:
    # Given: a batch whose two jobs carry the same client id (neither exists yet)
    same = uuid7()
    batch = [new_job({**body(), "id": same}), new_job({**body(queue="other"), "id": same})]
    # When
    try:
        run(broker.enqueue(batch, now_ms=timefmt.now_ms()))
        rejected = False
    except Duplicate:
        rejected = True
    # Then: a duplicate, nothing written (not one hash counted twice)
    assert rejected
    assert not redis_client.exists(keys.job(same))
    assert not redis_client.exists(keys.counts("default"))


def test_enqueue_batch_with_two_unique_twins_creates_one(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    twins = [new_job(body(unique={"keys": ["type"]})) for _ in range(2)]
    try:
        run(broker.enqueue(twins, now_ms=timefmt.now_ms()))
    except Duplicate:
        pass
    assert redis_client.zcard(keys.available("default")) <= 1


def test_enqueue_batch_replacing_one_holder_twice_keeps_counts(
    enqueue: Enqueue, broker: Broker, run: Run[Any], allow_inconsistency: None
) -> None:
    replace = {"keys": ["type"], "on_conflict": "replace"}
    enqueue(body(unique=replace))
    enqueue(body(unique=replace), body(unique=replace))
    assert run(check_integrity(broker.redis, broker.keys)) == []


def test_enqueue_emits_one_event_per_job(enqueue: Enqueue, redis_client: redis.Redis, keys: Keys) -> None:
    enqueue(body(), body(scheduled_at="+PT1H"))
    types = [fields[b"type"] for _, fields in redis_client.xrange(keys.events)]
    assert types == [b"job.enqueued", b"job.scheduled"]
