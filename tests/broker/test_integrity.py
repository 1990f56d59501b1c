"""check_integrity: silent on every consistent store, and names each kind of broken invariant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.envelope import ALL_STATES
from tests.broker.conftest import Run, body

JobInState = Callable[[str], str]
Corruption = Callable[[redis.Redis, Keys, dict[str, str]], None]


@pytest.fixture
def one_of_each(job_in_state: JobInState) -> dict[str, str]:
    """One job in each of the eight states, all in queue "states", all with an expiry."""
    return {state.value: job_in_state(state.value) for state in ALL_STATES}


def test_integrity_consistent_store_has_no_problems(
    one_of_each: dict[str, str], broker: Broker, run: Run[Any]
) -> None:
    assert run(check_integrity(broker.redis, broker.keys)) == []


def test_integrity_empty_store_has_no_problems(broker: Broker, run: Run[Any]) -> None:
    assert run(check_integrity(broker.redis, broker.keys)) == []


def test_integrity_reads_many_jobs_in_batches(
    enqueue: Callable[..., list[str]], broker: Broker, run: Run[Any]
) -> None:
    enqueue(*(body(queue=f"q{n % 3}") for n in range(1_203)))
    run(broker.fetch(["q0", "q1"], count=450, worker_id="w1"))
    assert run(check_integrity(broker.redis, broker.keys)) == []


def _zadd(key: Callable[[Keys, dict[str, str]], str], member: str) -> Corruption:
    return lambda c, k, ids: c.zadd(key(k, ids), {ids.get(member, member): 1})


def _zrem(key: Callable[[Keys, dict[str, str]], str], member: str) -> Corruption:
    return lambda c, k, ids: c.zrem(key(k, ids), ids[member])


def _hset(state: str, field: str, value: str) -> Corruption:
    return lambda c, k, ids: c.hset(k.job(ids[state]), field, value)


def _available(k: Keys, ids: dict[str, str]) -> str:
    return k.available("states")


CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "invalid-state": (_hset("pending", "state", "sleeping"), "invalid state 'sleeping'"),
    "wrong-id-field": (_hset("pending", "id", "someone-else"), "hash field id is 'someone-else'"),
    "available-not-indexed": (_zrem(_available, "available"), "state 'available' but not in"),
    "available-also-delayed": (_zadd(lambda k, i: k.delayed, "available"), "but also in {ojs-test}:delayed"),
    "available-in-other-queue": (_zadd(lambda k, i: k.available("elsewhere"), "available"),
                                 "also in {ojs-test}:queue:elsewhere:available"),
    "scheduled-not-delayed": (_zrem(lambda k, i: k.delayed, "scheduled"), "state 'scheduled' but not in"),
    "active-not-active": (_zrem(lambda k, i: k.active, "active"), "state 'active' but not in"),
    "pending-indexed": (_zadd(_available, "pending"), "state 'pending' but also in"),
    "completed-active": (_zadd(lambda k, i: k.active, "completed"), "state 'completed' but also in"),
    "dangling-entry": (_zadd(lambda k, i: k.delayed, "ghost"), "holds 'ghost' but {ojs-test}:job:ghost does not exist"),
    "expiry-not-indexed": (_zrem(lambda k, i: k.expiring, "retryable"), "but not in expiring"),
    "terminal-expiring": (_zadd(lambda k, i: k.expiring, "cancelled"), "still in expiring"),
    "expiry-score": (lambda c, k, ids: c.zadd(k.expiring, {ids["available"]: 5}), "expiring score 5 != expires_ms"),
    "retry-score": (lambda c, k, ids: c.zadd(k.delayed, {ids["retryable"]: 5}), "delayed score 5 != next_attempt_at"),
    "lease-score": (lambda c, k, ids: c.zadd(k.active, {ids["active"]: 5}), "active score 5 != lease"),
    "dlq-not-discarded": (_zadd(lambda k, i: k.dlq, "completed"), "in {ojs-test}:dlq but state 'completed'"),
    "dead-letter-missing": (_hset("discarded", "dead_lettered", "1"), "dead-lettered but not in {ojs-test}:dlq"),
    "count-off": (lambda c, k, ids: c.hincrby(k.counts("states"), "completed", 1),
                  "{ojs-test}:queue:states:counts: completed = 2, but 1 such jobs exist"),
    "count-unknown-state": (lambda c, k, ids: c.hset(k.counts("states"), "sleeping", 3), "sleeping = 3, but 0"),
    "count-missing-queue": (lambda c, k, ids: c.hset(k.job(ids["pending"]), "queue", "nowhere"),
                            "{ojs-test}:queue:nowhere:counts: pending = 0, but 1 such jobs exist"),
    "holder-set-missing": (lambda c, k, ids: c.delete(k.worker_jobs("w1")), "held by 'w1', but not in"),
    "holder-set-stale": (lambda c, k, ids: c.sadd(k.worker_jobs("w9"), ids["completed"]),
                         "worker-jobs:w9 holds"),
    "job-not-a-hash": (lambda c, k, ids: c.set(k.job("odd"), "x"), "job odd: {ojs-test}:job:odd is not a hash"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_integrity_reports_broken_invariant(
    one_of_each: dict[str, str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    allow_inconsistency: None, name: str,
) -> None:
    # Given: a consistent store, then one corruption
    corrupt, expected = CORRUPTIONS[name]
    corrupt(redis_client, keys, one_of_each)
    # When
    problems = run(check_integrity(broker.redis, keys))
    # Then: the problem is named
    assert any(expected in p for p in problems), problems


def test_integrity_checks_one_namespace_only(
    one_of_each: dict[str, str], broker: Broker, run: Run[Any], redis_client: redis.Redis
) -> None:
    # Given: a broken namespace whose prefix is full of glob characters, beside ours
    other = Keys("{o*[t]?}:")
    redis_client.hset(other.job("x"), mapping={"state": "available", "queue": "q", "id": "x"})
    redis_client.zadd(other.delayed, {"ghost": 1})
    # When / Then: ours is clean; theirs is reported, and only theirs
    assert run(check_integrity(broker.redis, broker.keys)) == []
    problems = run(check_integrity(broker.redis, other))
    assert problems and all("{o*[t]?}:" in p or "job x" in p for p in problems)
    assert not any(job_id in p for p in problems for job_id in one_of_each.values())
    redis_client.delete(other.job("x"), other.delayed, other.counts("q"))


def test_integrity_accepts_workflow_steps_waiting_and_advanced(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a three-step chain; steps 2 and 3 wait (stored, not indexed, not counted)
    steps = [{"type": "step.one", "args": [1]}, {"type": "step.two", "args": [2]}, {"type": "step.three", "args": [3]}]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    assert run(check_integrity(broker.redis, keys)) == []
    # When: the first step completes (which advances the chain), and the second is cancelled
    (first,) = run(broker.fetch(["default"]))
    run(broker.ack(first[b"id"].decode()))
    (second,) = run(broker.fetch(["default"]))
    run(broker.cancel(second[b"id"].decode()))
    run(broker.advance_workflows())
    # Then: every stage is consistent
    states = sorted(redis_client.hget(k, "state").decode() for k in redis_client.scan_iter(keys.job("*")))
    assert states == ["cancelled", "cancelled", "completed"]
    assert run(check_integrity(broker.redis, keys)) == []


def test_integrity_workflow_step_with_expiry_is_expiring_once_enqueued(
    broker: Broker, run: Run[Any], allow_inconsistency: None
) -> None:
    steps = [{"type": "step.one", "args": []}, {"type": "step.two", "args": [], "options": {"expires_at": "+PT1H"}}]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    (first,) = run(broker.fetch(["default"]))
    run(broker.ack(first[b"id"].decode()))
    assert run(check_integrity(broker.redis, broker.keys)) == []


def test_integrity_holds_the_tenant_sets_to_the_job_states(
    enqueue: Callable[..., list[str]], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    allow_inconsistency: None,
) -> None:
    # Given: a tenant's live job and its ended one, consistent
    live, ended = enqueue(*(dict(body(), meta={"tenant_id": "acme"}) for _ in range(2)))
    run(broker.cancel(ended))
    assert run(check_integrity(broker.redis, keys)) == []
    # When: the live one drops out of the set, the ended one and a stranger get into it
    redis_client.srem(keys.tenant_jobs("acme"), live)
    redis_client.sadd(keys.tenant_jobs("acme"), ended)
    redis_client.sadd(keys.tenant_jobs("other"), ended)
    problems = run(check_integrity(broker.redis, keys))
    # Then: each is named
    assert any(f"job {live}: available, but not in" in p for p in problems), problems
    assert any(f"job {ended}: cancelled, but in" in p for p in problems), problems
    assert any(f"tenant-jobs:other holds '{ended}' (its tenant is 'acme')" in p for p in problems), problems
