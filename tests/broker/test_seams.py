"""Where two features meet: workflows with cancel, dead letters and unique jobs; crons with
overlap policies on two schedulers; unique jobs with dead-letter retry and schedule-keeping
replacement. Each test is a seam that once lost, resurrected or double-counted a job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.keys import Keys
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.config import Settings
from runtime.envelope import CronRequest, ErrorInfo
from runtime.errors import Conflict, Duplicate, NotFound
from tests.broker.conftest import Run, read_job

Enqueue = Callable[..., list[str]]
DEAD = ErrorInfo(message="poison", code="DEAD_LETTER")


def job_ids(redis_client: redis.Redis, keys: Keys) -> set[str]:
    return {k.decode().removeprefix(keys.job("")) for k in redis_client.scan_iter(keys.job("*"))}


def states(redis_client: redis.Redis, keys: Keys, ids: list[str]) -> list[str]:
    return [read_job(redis_client, keys, i).get("state", "") for i in ids]


def member_ids(redis_client: redis.Redis, keys: Keys, workflow_id: str) -> list[str]:
    w = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.workflow(workflow_id)).items()}
    return [w[f"j{i}"] for i in range(int(w["members"]))]


# --- workflows x cancel ----------------------------------------------------------------------

def test_a_cancelled_waiting_step_never_runs_when_its_dependency_completes(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a two-step chain whose second step, still waiting, is cancelled by a client
    steps = [{"type": "step.one", "args": [1]}, {"type": "step.two", "args": [2]}]
    wf = run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    first, second = member_ids(redis_client, keys, wf["id"])
    assert run(broker.cancel(second)) == "waiting"
    # When: the first step completes
    (claimed,) = run(broker.fetch(["default"], worker_id="w1"))
    assert claimed[b"id"].decode() == first
    run(broker.ack(first))
    # Then: the cancelled step stays cancelled and is never claimed
    assert states(redis_client, keys, [first, second]) == ["completed", "cancelled"]
    assert run(broker.fetch(["default"], worker_id="w1")) == []
    assert redis_client.zcard(keys.available("default")) == 0
    assert run(Workflows(broker).get(wf["id"]))["state"] == "failed"


# --- workflows x dead letter -----------------------------------------------------------------

def batch_with_callback(broker: Broker, run: Run[Any]) -> dict[str, Any]:
    jobs = [{"type": "part", "args": [i], "options": {"retry": {"max_attempts": 1}}} for i in range(2)]
    return run(Workflows(broker).create(WorkflowRequest(
        type="batch", jobs=jobs, callbacks={"on_complete": {"type": "report", "args": [], "options": {"queue": "cb"}}},
    )))


def test_dead_letter_retry_of_a_member_of_a_running_workflow_is_refused(
    broker: Broker, admin: Admin, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a batch of two whose first member was dead-lettered while the second still runs
    wf = batch_with_callback(broker, run)
    a, b, callback = member_ids(redis_client, keys, wf["id"])
    claimed = run(broker.fetch(["default"], count=2, worker_id="w1"))
    assert {h[b"id"].decode() for h in claimed} == {a, b}
    run(broker.nack(a, DEAD))
    # When: an operator retries the dead-lettered member
    with pytest.raises(Conflict) as refused:
        run(admin.dead_letter_retry(a))
    # Then: refused with a clear reason, nothing changed; the callback waits for the real end
    assert wf["id"] in refused.value.message
    assert states(redis_client, keys, [a, b, callback]) == ["discarded", "active", "waiting"]
    assert redis_client.zscore(keys.dlq, a) is not None
    run(broker.ack(b))
    assert states(redis_client, keys, [callback]) == ["available"]
    assert run(Workflows(broker).get(wf["id"]))["failed"] == 1


def test_a_member_retried_after_its_workflow_ended_does_not_count_again(
    broker: Broker, admin: Admin, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    wf = batch_with_callback(broker, run)
    a, b, callback = member_ids(redis_client, keys, wf["id"])
    run(broker.fetch(["default"], count=2, worker_id="w1"))
    run(broker.nack(a, DEAD))
    run(broker.ack(b))
    (cb,) = run(broker.fetch(["cb"], worker_id="w1"))
    run(broker.ack(cb[b"id"].decode()))
    before = run(Workflows(broker).get(wf["id"]))
    assert (before["state"], before["completed"], before["failed"]) == ("failed", 1, 1)
    # When: the member is retried from the dead letter queue and completes
    run(admin.dead_letter_retry(a))
    (again,) = run(broker.fetch(["default"], worker_id="w1"))
    run(broker.ack(again[b"id"].decode()))
    run(broker.advance_workflows())
    # Then: the workflow's record is what it was, and the callback did not become runnable again
    after = run(Workflows(broker).get(wf["id"]))
    assert (after["state"], after["completed"], after["failed"]) == ("failed", 1, 1)
    assert states(redis_client, keys, [callback]) == ["completed"]
    assert run(broker.fetch(["cb"], worker_id="w1")) == []


# --- workflows x unique ----------------------------------------------------------------------

def test_a_workflow_whose_member_meets_a_unique_ignore_conflict_is_refused_whole(
    broker: Broker, enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    unique = {"keys": ["type", "args"], "on_conflict": "ignore"}
    (holder,) = enqueue({"type": "report", "args": [7], "options": {"unique": unique}})
    before = job_ids(redis_client, keys)
    jobs = [{"type": "report", "args": [7], "options": {"unique": unique}}, {"type": "other", "args": []}]
    with pytest.raises(Duplicate) as refused:
        run(Workflows(broker).create(WorkflowRequest(type="group", jobs=jobs)))
    assert refused.value.details["existing_job_id"] == holder
    # Nothing was written: no workflow, no member, no stray hash
    assert job_ids(redis_client, keys) == before
    assert list(redis_client.scan_iter(keys.workflow("*"))) == []


def test_the_outbox_is_not_in_the_workflow_namespace(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: an outbox with an entry in it (a step ended, the advance step has not run yet)
    redis_client.rpush(keys.workflow_outbox, "some-job")
    # When / Then: a workflow id that spells the outbox's old name is simply not found
    for name in ("advance", "outbox", "-outbox"):
        with pytest.raises(NotFound):
            run(Workflows(broker).get(name))
        with pytest.raises(NotFound):
            run(Workflows(broker).cancel(name))
    redis_client.delete(keys.workflow_outbox)


def test_advance_never_writes_a_hash_for_a_member_that_does_not_exist(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    steps = [{"type": "step.one", "args": [1]}, {"type": "step.two", "args": [2]}]
    wf = run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    first, second = member_ids(redis_client, keys, wf["id"])
    redis_client.delete(keys.job(second))  # a member gone (flushed by hand)
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.ack(first))
    assert not redis_client.exists(keys.job(second))


# --- crons x overlap on two schedulers -------------------------------------------------------

def test_cancel_previous_on_two_schedulers_cancels_only_the_previous_job(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a cron with cancel_previous whose last job is still running
    crons_a, crons_b = Crons(broker), Crons(broker)
    run(crons_a.register(CronRequest(name="nightly", expression="* * * * *", overlap_policy="cancel_previous",
                                     job_template={"type": "nightly", "args": []})))
    tick1 = int(redis_client.zscore(keys.cron_next, "nightly"))
    assert run(crons_a._fire("nightly", tick1, tick1)) == 1
    previous = redis_client.hget(keys.cron_state("nightly"), "last_job_id").decode()
    run(broker.fetch(["default"], worker_id="w1"))
    # When: two schedulers fire the next tick, one after the other
    tick2 = int(redis_client.zscore(keys.cron_next, "nightly"))
    fired = run(crons_a._fire("nightly", tick2, tick2)) + run(crons_b._fire("nightly", tick2, tick2))
    # Then: one job for the tick, live; the previous one cancelled
    assert fired == 1
    fresh = redis_client.hget(keys.cron_state("nightly"), "last_job_id").decode()
    assert fresh != previous
    assert states(redis_client, keys, [previous, fresh]) == ["cancelled", "available"]


# --- unique x dead letter, unique x schedule -------------------------------------------------

UNIQUE = {"keys": ["type", "args"], "on_conflict": "reject"}


def test_dead_letter_retry_takes_the_unique_lock_again(
    broker: Broker, admin: Admin, enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (job_id,) = enqueue({"type": "sync", "args": [1], "options": {"unique": UNIQUE}})
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.nack(job_id, DEAD))
    run(admin.dead_letter_retry(job_id))
    # A second job of the same kind now meets the retried one
    with pytest.raises(Duplicate) as refused:
        enqueue({"type": "sync", "args": [1], "options": {"unique": UNIQUE}})
    assert refused.value.details["existing_job_id"] == job_id


def test_dead_letter_retry_is_refused_while_another_job_holds_the_unique_lock(
    broker: Broker, admin: Admin, enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    (first,) = enqueue({"type": "sync", "args": [1], "options": {"unique": UNIQUE}})
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.nack(first, DEAD))
    (second,) = enqueue({"type": "sync", "args": [1], "options": {"unique": UNIQUE}})
    with pytest.raises(Conflict) as refused:
        run(admin.dead_letter_retry(first))
    assert refused.value.details["existing_job_id"] == second
    assert states(redis_client, keys, [first, second]) == ["discarded", "available"]
    assert redis_client.zscore(keys.dlq, first) is not None


def test_replace_except_schedule_keeps_the_holders_time(
    enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    now = timefmt.now_ms()
    policy = {"keys": ["type"], "on_conflict": "replace_except_schedule"}
    (holder,) = enqueue({"type": "digest", "args": ["a"], "options": {"unique": policy, "scheduled_at": "+PT1H"}},
                        now_ms=now)
    due = redis_client.zscore(keys.delayed, holder)
    scheduled_at = read_job(redis_client, keys, holder)["scheduled_at"]
    (replacement,) = enqueue({"type": "digest", "args": ["b"], "options": {"unique": policy, "scheduled_at": "+PT2H"}},
                             now_ms=now + 1)
    new = read_job(redis_client, keys, replacement)
    assert replacement != holder
    assert read_job(redis_client, keys, holder)["state"] == "cancelled"
    assert (new["state"], new["scheduled_at"], new["args"]) == ("scheduled", scheduled_at, '["b"]')
    assert redis_client.zscore(keys.delayed, replacement) == due


def test_replace_except_schedule_of_an_unscheduled_holder_is_replace(
    enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    policy = {"keys": ["type"], "on_conflict": "replace_except_schedule"}
    (holder,) = enqueue({"type": "digest", "args": ["a"], "options": {"unique": policy}})
    (replacement,) = enqueue({"type": "digest", "args": ["b"], "options": {"unique": policy, "scheduled_at": "+PT2H"}})
    assert read_job(redis_client, keys, holder)["state"] == "cancelled"
    assert read_job(redis_client, keys, replacement)["state"] == "scheduled"


# --- workflows x size ------------------------------------------------------------------------

@pytest.fixture
def broker_with(redis_url: str, run: Run[Any], keys: Keys) -> Iterator[Callable[..., Broker]]:
    """``broker_with(**settings)``: a Broker of this test's namespace with other settings."""
    made: list[tuple[Redis, Broker]] = []

    def make(**settings: Any) -> Broker:
        client = Redis.from_url(redis_url)
        made.append((client, Broker(client, Settings(redis_url=redis_url, key_prefix=keys.prefix, **settings))))
        return made[-1][1]

    yield make
    for client, broker in made:
        run(broker.close())
        run(client.aclose())


def test_chain_parent_results_are_bounded_newest_first(
    broker_with: Callable[..., Broker], run: Run[Any]
) -> None:
    broker = broker_with(parent_results_max_bytes=70)
    steps = [{"type": f"step.s{i}", "args": [i]} for i in range(4)]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    results = [b'{"step":%d,"pad":"%s"}' % (i, b"x" * 10) for i in range(3)]
    assert {len(r) for r in results} == {29}
    parents = []
    for result in results:
        (claimed,) = run(broker.fetch(["default"], worker_id="w1"))
        parents.append(claimed.get(b"parent_results"))
        run(broker.ack(claimed[b"id"].decode(), result))
    (last,) = run(broker.fetch(["default"], worker_id="w1"))
    run(broker.ack(last[b"id"].decode()))
    # Newest first while they fit in 70 bytes; older ones are null, indexes unchanged
    assert last[b"parent_results"] == b"[null," + results[1] + b"," + results[2] + b"]"
    assert parents[1] == b"[" + results[0] + b"]"


def test_the_preceding_result_is_passed_whatever_its_size(
    broker_with: Callable[..., Broker], run: Run[Any]
) -> None:
    broker = broker_with(parent_results_max_bytes=10)
    steps = [{"type": f"step.s{i}", "args": [i]} for i in range(2)]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    (first,) = run(broker.fetch(["default"], worker_id="w1"))
    run(broker.ack(first[b"id"].decode(), b'{"big":"' + b"y" * 100 + b'"}'))
    (second,) = run(broker.fetch(["default"], worker_id="w1"))
    assert second[b"parent_results"] == b'[{"big":"' + b"y" * 100 + b'"}]'
    run(broker.ack(second[b"id"].decode()))


# --- workflows x unique, continued -------------------------------------------------------------

def test_two_members_of_one_kind_in_a_workflow_are_refused_whatever_the_policy(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    for policy in ("replace", "replace_except_schedule", "reject"):
        unique = {"keys": ["type"], "on_conflict": policy}
        jobs = [{"type": "twin", "args": [i], "options": {"unique": unique}} for i in range(2)]
        with pytest.raises(Duplicate):
            run(Workflows(broker).create(WorkflowRequest(type="group", jobs=jobs)))
    assert job_ids(redis_client, keys) == set()
    assert list(redis_client.scan_iter(keys.workflow("*"))) == []


def test_a_waiting_step_holds_its_unique_lock(
    broker: Broker, enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a chain whose second step, still waiting, is a unique job
    unique = {"keys": ["type"], "on_conflict": "reject"}
    steps = [{"type": "first", "args": []}, {"type": "report", "args": [], "options": {"unique": unique}}]
    wf = run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    first, second = member_ids(redis_client, keys, wf["id"])
    # Then: a job of the same kind meets it as the holder
    with pytest.raises(Duplicate) as refused:
        enqueue({"type": "report", "args": [], "options": {"unique": unique}})
    assert refused.value.details["existing_job_id"] == second
    # ...until the step is cancelled with its chain (the lock goes with it)
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.nack(first, DEAD))
    assert states(redis_client, keys, [second]) == ["cancelled"]
    enqueue({"type": "report", "args": [], "options": {"unique": unique}})


def test_a_waiting_step_with_replace_cancels_the_holder(
    broker: Broker, enqueue: Enqueue, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    unique = {"keys": ["type"], "on_conflict": "replace"}
    (holder,) = enqueue({"type": "report", "args": [], "options": {"unique": unique}})
    steps = [{"type": "first", "args": []}, {"type": "report", "args": [], "options": {"unique": unique}}]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    assert states(redis_client, keys, [holder]) == ["cancelled"]


def test_the_step_drains_an_outbox_left_under_its_old_name(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a step completed by a server of the previous version, which queued it under the
    # outbox's old name
    steps = [{"type": "step.one", "args": [1]}, {"type": "step.two", "args": [2]}]
    wf = run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    first, second = member_ids(redis_client, keys, wf["id"])
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.ack(first))
    redis_client.delete(keys.workflow_outbox)
    redis_client.hdel(keys.workflow(wf["id"]), "x0", "completed")
    redis_client.hset(keys.job(second), mapping={"state": "waiting", "wf_pending": 1})
    redis_client.hincrby(keys.counts("default"), "available", -1)
    redis_client.zrem(keys.available("default"), second)
    redis_client.rpush(keys.prefix + "workflow:advance", first)
    # When: the scheduler step runs
    run(broker.scheduler_step())
    # Then: the entry was applied: the next step is available
    assert states(redis_client, keys, [second]) == ["available"]
    assert not redis_client.exists(keys.prefix + "workflow:advance")
