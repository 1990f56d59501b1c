"""The webhook fan-out (webhook_fanout.lua and runtime.broker.webhooks): events of the stream
become deliveries once, for the subscriptions that existed when they happened."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.webhooks import Webhooks
from runtime.webhooks.model import SubscriptionRequest
from tests.broker.conftest import Run, body, new_job

SECRET = "whsec_fanout_test_secret"


def subscription(url: str, events: list[str]) -> SubscriptionRequest:
    return msgspec.convert({"url": url, "events": events}, SubscriptionRequest)


def deliveries(redis_client: redis.Redis, broker: Broker) -> list[tuple[str, str]]:
    """(subscription id, event subject) of every delivery made."""
    found = []
    for key in redis_client.scan_iter(match=broker.keys.prefix + "webhook:delivery:*"):
        row = redis_client.hgetall(key)
        subject = msgspec.json.decode(row[b"body"])["subject"]
        found.append((row[b"subscription_id"].decode(), subject))
    return sorted(found)


def test_fanout_makes_one_delivery_per_event_and_matching_subscription(
        broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis) -> None:
    hooks = Webhooks(broker)
    # Given a job enqueued before any subscription, and two subscriptions
    enqueue(body())
    enqueued = run(hooks.create(subscription("https://a.example.com", ["job.enqueued"]), SECRET))
    scheduled = run(hooks.create(subscription("https://b.example.com", ["job.scheduled"]), SECRET))
    # When jobs are enqueued and the fan-out runs (twice: the second finds nothing new)
    job_ids = enqueue(body(), body())
    run(hooks.fan_out())
    run(hooks.fan_out())
    # Then each later enqueue is one delivery to the subscription that wants it, and nothing else
    assert deliveries(redis_client, broker) == sorted((enqueued.id, job_id) for job_id in job_ids)
    assert scheduled.id not in {sub for sub, _ in deliveries(redis_client, broker)}


def test_fanout_gives_a_subscription_made_meanwhile_the_events_after_it(
        broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis) -> None:
    hooks = Webhooks(broker)
    first = run(hooks.create(subscription("https://a.example.com", ["job.enqueued"]), SECRET))
    made: dict[str, Any] = {}
    read_subscriptions = hooks.subscriptions

    async def subscriptions_then_a_new_one_and_an_event() -> Any:
        # Given a fan-out step that has read the subscriptions when another is made and a job
        # is enqueued
        found = await read_subscriptions()
        if not made:
            made["sub"] = await hooks.create(subscription("https://b.example.com", ["job.enqueued"]), SECRET)
            now = timefmt.now_ms()
            (done,) = await broker.enqueue([new_job(body(), now_ms=now)], now_ms=now)
            made["job"] = done.job_id
        return found

    hooks.subscriptions = subscriptions_then_a_new_one_and_an_event  # type: ignore[method-assign]
    before = enqueue(body())[0]
    # When the fan-out runs to the end
    while run(hooks.fan_out()):
        pass
    run(hooks.fan_out())
    # Then the new subscription gets the job enqueued after it, and not the one before
    got = deliveries(redis_client, broker)
    assert (made["sub"].id, made["job"]) in got, got
    assert (made["sub"].id, before) not in got
    assert {(first.id, before), (first.id, made["job"])} <= set(got)


def test_fanout_is_done_by_one_process_at_a_time(
        broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis) -> None:
    # Given two server processes' webhook stores, and a subscription
    first, second = Webhooks(broker), Webhooks(broker)
    sub = run(first.create(subscription("https://a.example.com", ["job.enqueued"]), SECRET))
    (one,) = enqueue(body())
    # When both fan out, the first one first
    run(first.fan_out())
    (two,) = enqueue(body())
    run(second.fan_out())
    # Then the second leaves the work to the first while its lease lasts
    assert deliveries(redis_client, broker) == [(sub.id, one)]
    run(first.fan_out())
    assert deliveries(redis_client, broker) == sorted([(sub.id, one), (sub.id, two)])
    # and takes over once the first stopped renewing it (its lease ended)
    redis_client.delete(broker.keys.webhook_fanout_lease)
    (three,) = enqueue(body())
    run(second.fan_out())
    assert (sub.id, three) in deliveries(redis_client, broker)
    run(first.fan_out())  # the first, back, finds the role taken
    assert redis_client.get(broker.keys.webhook_fanout_lease) == second._process_id.encode()


def test_a_delivery_whose_attempts_never_settle_is_dead_at_its_max_attempts(
    broker: Broker, run: Run[Any], redis_client: redis.Redis,
) -> None:
    """A sender that dies (or hangs) on one delivery every time: each lease just runs out. The
    delivery is claimed again up to its attempts, then it is dead, not claimed for ever."""
    hooks = Webhooks(broker)
    run(hooks.create(subscription("https://a.example.com", ["job.completed"]), SECRET))
    redis_client.xadd(broker.keys.events, {"type": "job.completed", "subject": "j1", "data": "{}"})
    now = timefmt.now_ms()
    run(hooks.fan_out(now_ms=now))
    attempts = []
    for _ in range(2 * broker.settings.webhook_max_attempts):
        now += broker.settings.webhook_lease_ms + 1
        attempts += [c.attempt for c in run(hooks.claim(8, now_ms=now))]
    assert attempts == list(range(1, broker.settings.webhook_max_attempts + 1))
    (delivery,) = redis_client.zrange(broker.keys.webhook_due, 0, -1) or [None]
    assert delivery is None  # nothing due any more


def test_the_delivery_loop_is_busy_while_the_fanout_is_behind_the_stream(
    broker: Broker, run: Run[Any], redis_client: redis.Redis,
) -> None:
    """An idle loop slows down; one whose fan-out is behind must not, or the stream's trim
    overtakes it (a subscription to a rare event, a burst of other events)."""
    from runtime.webhooks.delivery import DeliveryLoop

    hooks = Webhooks(broker)
    run(hooks.create(subscription("https://a.example.com", ["job.discarded"]), SECRET))
    pipe = redis_client.pipeline(transaction=False)
    for i in range(12_000):
        pipe.xadd(broker.keys.events, {"type": "job.completed", "subject": f"j{i}", "data": "{}"})
    pipe.execute()
    loop = DeliveryLoop(hooks, broker.settings)
    last = redis_client.xrevrange(broker.keys.events, count=1)[0][0]
    steps = 0
    while True:
        busy = run(loop.step())
        steps += 1
        if redis_client.get(broker.keys.webhook_cursor) == last:
            break
        assert busy, f"step {steps} said idle with events still to fan out"
    assert steps > 1  # the burst took more than one step: the check above ran
    assert not run(loop.step())  # caught up, nothing to send: idle


def test_a_delivery_retried_twice_at_once_is_sent_once_and_a_vanished_one_stays_gone(
    broker: Broker, run: Run[Any], redis_client: redis.Redis,
) -> None:
    import asyncio

    from runtime.errors import Conflict, NotFound

    hooks = Webhooks(broker)
    run(hooks.create(subscription("https://a.example.com", ["job.completed"]), SECRET))
    redis_client.xadd(broker.keys.events, {"type": "job.completed", "subject": "j1", "data": "{}"})
    now = timefmt.now_ms()
    run(hooks.fan_out(now_ms=now))
    (delivery_id,) = [m.decode() for m in redis_client.zrange(broker.keys.webhook_due, 0, -1)]
    key = broker.keys.webhook_delivery(delivery_id)
    redis_client.hset(key, "state", "dead")
    redis_client.zrem(broker.keys.webhook_due, delivery_id)

    async def twice() -> list[Any]:
        return await asyncio.gather(hooks.retry(delivery_id), hooks.retry(delivery_id), return_exceptions=True)

    outcomes = run(twice())
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "dict"], outcomes
    assert any(isinstance(o, Conflict) for o in outcomes)
    assert redis_client.hget(key, "state") == b"pending"
    # A record gone (its retention ended) is not written back as a partial hash
    redis_client.delete(key)
    with pytest.raises(NotFound):
        run(hooks.retry(delivery_id))
    assert redis_client.exists(key) == 0


def test_a_delivery_whose_record_expires_as_it_is_retried_is_not_written_back_in_part(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retention ends right after the retry has read the record's state: a check and a
    write apart would write a hash with no body or subscription back (a 500 to read)."""
    from runtime.errors import NotFound

    hooks = Webhooks(broker)
    run(hooks.create(subscription("https://a.example.com", ["job.completed"]), SECRET))
    redis_client.xadd(broker.keys.events, {"type": "job.completed", "subject": "j1", "data": "{}"})
    run(hooks.fan_out(now_ms=timefmt.now_ms()))
    (delivery_id,) = [m.decode() for m in redis_client.zrange(broker.keys.webhook_due, 0, -1)]
    key = broker.keys.webhook_delivery(delivery_id)
    redis_client.hset(key, "state", "dead")
    read_state = hooks.redis.hget

    async def expiring_after_the_read(name: str, field: str) -> Any:
        value = await read_state(name, field)
        if name == key and field == "state":
            redis_client.delete(key)  # its retention ends just now
        return value

    monkeypatch.setattr(hooks.redis, "hget", expiring_after_the_read)
    try:
        run(hooks.retry(delivery_id))
    except NotFound:
        pass  # gone before the retry's own read: as good
    fields = redis_client.hgetall(key)
    assert not fields or b"body" in fields, fields  # whole, or not there at all


def test_the_delivery_logs_of_a_subscription_deleted_meanwhile_are_empty_not_an_error(
        broker: Broker, run: Run[Any], redis_client: redis.Redis) -> None:
    # Given two subscriptions with an attempt each in their logs (as the delivery loop writes them)
    hooks = Webhooks(broker)
    kept = run(hooks.create(subscription("https://a.example.com", ["job.enqueued"]), SECRET))
    gone = run(hooks.create(subscription("https://b.example.com", ["job.enqueued"]), SECRET))
    for sub in (kept, gone):
        redis_client.lpush(broker.keys.webhook_log(sub.id), msgspec.json.encode({"subscription_id": sub.id}))
    listed = [s.id for s in run(hooks.subscriptions())]
    # When one is deleted after the listing read the subscriptions, before it reads their logs
    run(hooks.delete(gone.id))
    logs = run(hooks.logs(listed, limit=10))
    # Then the deleted one has none and the other keeps its own
    assert dict(zip(listed, logs, strict=True)) == {kept.id: [{"subscription_id": kept.id}], gone.id: []}
