"""Workflows at their seams with the dead letter queue, unique locks, pending jobs and queue
registration: each test is a path by which a workflow could be stranded or a lock shared."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.errors import Conflict, InvalidRequest
from tests.broker.conftest import Run
from tests.broker.test_nested_workflows import DEAD, ONCE, Flow, chain, step

UNIQUE = {"keys": ["type"], "on_conflict": "reject"}


@pytest.fixture
def flow(broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys) -> Any:
    return lambda shape: Flow(broker, run, redis_client, keys, shape)
DLQ_ONCE = {"retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}}


def test_a_dead_letter_retry_meets_a_waiting_workflow_member_as_its_locks_holder(
    flow: Any, enqueue: Any, admin: Admin, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: a unique job A, dead-lettered (its lock released), and then a workflow whose waiting
    # second step takes the same lock (a waiting step holds it as the job it will become)
    (a,) = enqueue({"type": "u.step", "args": [], "options": {"unique": UNIQUE, **DLQ_ONCE}})
    run(broker.fetch(["default"], worker_id="w1"))
    run(broker.nack(a, DEAD))
    f = flow(chain(step("x"), step("u.step", unique=UNIQUE)))
    member = redis_client.hget(keys.workflow(f.id), "j1").decode()
    lock = keys.prefix + "unique:" + redis_client.hget(keys.job(member), "unique_key").decode()
    assert redis_client.get(lock) == member.encode()
    # When / Then: A retried out of the dead letter queue meets the member as the lock's holder
    with pytest.raises(Conflict):
        run(admin.dead_letter_retry(a))
    assert redis_client.get(lock) == member.encode()


def test_a_dead_lettered_member_of_a_running_workflow_is_not_deleted_before_its_workflow_ends(
    flow: Any, admin: Admin, broker: Broker, run: Run[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: a member dead-lettered, its outcome not applied to its workflow yet (an outbox
    # backlog, a crash after the nack)
    f = flow(chain(step("a", **ONCE), step("b")))
    f.runnable()
    real = broker.advance_workflows

    async def later() -> int:
        return 0

    monkeypatch.setattr(broker, "advance_workflows", later)
    f.dead_letter("a")
    a = f.view["steps"][0]["job_id"]
    # When: it is deleted from the dead letter queue: refused while its workflow runs
    with pytest.raises(Conflict):
        run(admin.dead_letter_delete(a))
    # Then: the advance applies its outcome, the workflow ends, and then it may go
    monkeypatch.setattr(broker, "advance_workflows", real)
    run(broker.scheduler_step())
    assert f.get()["state"] == "failed"
    run(admin.dead_letter_delete(a))


def test_a_workflow_member_cannot_be_pending(broker: Broker, run: Run[Any]) -> None:
    """A pending job waits for an activation no workflow sends: it would hold its workflow
    running for ever."""
    req = WorkflowRequest(type="chain", steps=[step("a"), {"type": "b", "args": [], "options": {"pending": True}}])
    with pytest.raises(InvalidRequest, match="pending"):
        run(Workflows(broker).create(req))


def test_a_queue_only_a_later_step_uses_is_known_from_the_start(flow: Any, admin: Admin, run: Run[Any]) -> None:
    f = flow(chain(step("a"), {"type": "b", "args": [], "options": {"queue": "later"}}))
    assert "later" in run(admin.queue_names())  # listings and bulk actions over every queue see it
    f.runnable()
    f.ack("a")
    assert f.runnable("later") == ["b"]
