"""Nested workflows on the broker: chains, groups and batches inside each other become one graph,
created in one script. Each test is a seam of the nesting: a part's completion starting what
follows it, its results passed on, a batch's callbacks scoped to their own batch and fired once,
failures, cancel and unique steps."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import redis

from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.envelope import ErrorInfo
from runtime.errors import Conflict, Duplicate
from tests.broker.conftest import Run, read_job

DEAD = ErrorInfo(message="poison", code="DEAD_LETTER")
ONCE = {"retry": {"max_attempts": 1}}


def step(job_type: str, **options: Any) -> dict[str, Any]:
    return {"type": job_type, "args": [], **({"options": options} if options else {})}


def chain(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "chain", "steps": list(steps)}


def group(*jobs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "group", "jobs": list(jobs)}


def batch(*jobs: dict[str, Any], **callbacks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "batch", "jobs": list(jobs), "callbacks": callbacks}


class Flow:
    """One workflow driven by hand: claim what is runnable, settle it by type."""

    def __init__(self, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
                 shape: dict[str, Any]) -> None:
        self.broker, self.run, self.redis, self.keys = broker, run, redis_client, keys
        self.flows = Workflows(broker)
        self.view = run(self.flows.create(msgspec_request(shape)))
        self.id = self.view["id"]
        self.claimed: dict[str, dict[bytes, bytes]] = {}

    def runnable(self, queue: str = "default") -> list[str]:
        """Claim every runnable job of the queue; their types, sorted."""
        got = self.run(self.broker.fetch([queue], count=50, worker_id="w1"))
        for h in got:
            self.claimed[h[b"type"].decode()] = h
        return sorted(h[b"type"].decode() for h in got)

    def parents(self, job_type: str) -> Any:
        raw = self.claimed[job_type].get(b"parent_results")
        return None if raw is None else json.loads(raw)

    def ack(self, job_type: str, result: Any = None) -> None:
        job_id = self.claimed.pop(job_type)[b"id"].decode()
        self.run(self.broker.ack(job_id, None if result is None else json.dumps(result).encode()))

    def dead_letter(self, job_type: str) -> None:
        self.run(self.broker.nack(self.claimed.pop(job_type)[b"id"].decode(), DEAD))

    def get(self) -> dict[str, Any]:
        return dict(self.run(self.flows.get(self.id)))

    def states(self) -> dict[str, str]:
        """Member label -> job state."""
        view = self.get()
        members = view["steps"] + list(view.get("callbacks", {}).values())
        return {m["id"]: m["state"] for m in members}


def msgspec_request(shape: dict[str, Any]) -> WorkflowRequest:
    return msgspec.convert(shape, WorkflowRequest)


@pytest.fixture
def flow(broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys) -> Any:
    return lambda shape: Flow(broker, run, redis_client, keys, shape)


def test_three_levels_run_in_order_and_pass_results_as_the_spec_nests_them(flow: Any) -> None:
    # Given: chain(a, group(b, chain(c1, c2)), d): three levels
    f = flow(chain(step("a"), group(step("b"), chain(step("c1"), step("c2"))), step("d")))
    assert f.view["total"] == 5
    assert f.runnable() == ["a"]
    f.ack("a", {"a": 1})
    # The group's jobs start together, each with what the group's step receives; the inner
    # chain's first step receives it too
    assert f.runnable() == ["b", "c1"]
    assert f.parents("b") == f.parents("c1") == [{"a": 1}]
    f.ack("c1", {"c1": 1})
    assert f.runnable() == ["c2"]
    assert f.parents("c2") == [{"c1": 1}]  # the inner chain's own earlier steps
    f.ack("c2", {"c2": 1})
    assert f.runnable() == []  # d waits for b
    f.ack("b", {"b": 1})
    # d receives a's result and the group's: per job, an inner chain's being its last step's
    assert f.runnable() == ["d"]
    assert f.parents("d") == [{"a": 1}, [{"b": 1}, {"c2": 1}]]
    f.ack("d")
    view = f.get()
    assert (view["state"], view["completed"], view["failed"]) == ("completed", 5, 0)
    assert [s["id"] for s in view["steps"]] == ["0", "1.0", "1.1.0", "1.1.1", "2"]


def test_a_nested_batch_fires_its_callbacks_once_and_the_chain_goes_on_after_them(
    flow: Any, broker: Broker, run: Run[Any]
) -> None:
    # Given: chain(a, batch(j1, j2; on_complete, on_success, on_failure), d)
    f = flow(chain(step("a"), batch(step("j1"), step("j2"), on_complete=step("cb.complete"),
                                     on_success=step("cb.success"), on_failure=step("cb.failure")), step("d")))
    f.runnable()
    f.ack("a", "A")
    assert f.runnable() == ["j1", "j2"]
    f.ack("j1", "J1")
    f.ack("j2", "J2")
    # on_complete and on_success, once, with the batch's results; on_failure never
    assert f.runnable() == ["cb.complete", "cb.success"]
    assert f.parents("cb.complete") == f.parents("cb.success") == ["J1", "J2"]
    run(broker.advance_workflows())
    assert f.runnable() == []
    assert f.states()["1.on_failure"] == "cancelled"
    # d waits for the callbacks that fired, not for the one that did not
    f.ack("cb.complete")
    assert f.runnable() == []
    f.ack("cb.success")
    assert f.runnable() == ["d"]
    assert f.parents("d") == ["A", ["J1", "J2"]]
    f.ack("d")
    assert f.get()["state"] == "completed"


def test_a_dead_lettered_job_of_a_nested_batch_fires_its_failure_callbacks_and_stops_the_chain(flow: Any) -> None:
    f = flow(chain(step("a"), batch(step("j1", **ONCE), step("j2"), on_complete=step("cb.complete"),
                                     on_success=step("cb.success"), on_failure=step("cb.failure")), step("d")))
    f.runnable()
    f.ack("a")
    f.runnable()
    f.dead_letter("j1")
    states = f.states()
    assert (states["2"], f.get()["state"]) == ("cancelled", "running")  # d never runs; j2 goes on
    assert f.runnable() == []
    f.ack("j2", "J2")
    assert f.runnable() == ["cb.complete", "cb.failure"]
    assert f.parents("cb.failure") == [None, "J2"]  # every job's result, null for the failed one
    assert f.get()["state"] == "running"  # the batch is not over before its callbacks
    f.ack("cb.complete")
    f.ack("cb.failure")
    assert f.runnable() == []
    view = f.get()
    assert view["state"] == "failed"
    assert f.states() == {"0": "completed", "1.0": "discarded", "1.1": "completed", "2": "cancelled",
                          "1.on_complete": "completed", "1.on_success": "cancelled", "1.on_failure": "completed"}


def test_a_nested_batch_judges_its_callbacks_by_its_own_jobs_only(flow: Any) -> None:
    # Given: group(batch(j; on_success, on_failure), x): x fails, the batch's own job does not
    f = flow(group(batch(step("j"), on_success=step("cb.success"), on_failure=step("cb.failure")), step("x", **ONCE)))
    assert f.runnable() == ["j", "x"]
    f.dead_letter("x")
    f.ack("j", "J")
    # Then: the batch succeeded, so on_success fires and on_failure does not
    assert f.runnable() == ["cb.success"]
    f.ack("cb.success")
    assert f.get()["state"] == "failed"  # the group failed through x


def test_a_failed_callback_of_a_nested_batch_fails_the_workflow(flow: Any) -> None:
    # Given: a chain that ends in a batch; the workflow waits for the batch's callbacks
    f = flow(chain(step("a"), batch(step("j"), on_complete=step("cb.complete", **ONCE))))
    f.runnable()
    f.ack("a")
    f.runnable()
    f.ack("j")
    assert f.get()["state"] == "running"
    assert f.runnable() == ["cb.complete"]
    f.dead_letter("cb.complete")
    view = f.get()
    assert (view["state"], view["completed"], view["failed"]) == ("failed", 2, 0)


def test_a_failure_in_a_nested_group_stops_what_follows_but_not_its_siblings(flow: Any) -> None:
    f = flow(chain(step("a"), group(step("b1", **ONCE), chain(step("b2"), step("b3"))), step("c")))
    f.runnable()
    f.ack("a")
    assert f.runnable() == ["b1", "b2"]
    f.dead_letter("b1")
    assert f.states()["2"] == "cancelled"
    assert f.get()["state"] == "running"  # the group waits for all its jobs
    f.ack("b2")
    assert f.runnable() == ["b3"]  # the sibling chain goes on
    f.ack("b3")
    view = f.get()
    assert (view["state"], view["completed"], view["failed"]) == ("failed", 3, 2)


def test_cancelling_a_nested_workflow_cancels_every_part_and_nothing_runs_after(
    flow: Any, broker: Broker, run: Run[Any]
) -> None:
    f = flow(chain(step("a"), group(chain(step("b1"), step("b2")), batch(step("j"), on_complete=step("cb"))),
                   step("c")))
    f.runnable()
    f.ack("a")
    assert f.runnable() == ["b1", "j"]
    cancelled = run(f.flows.cancel(f.id))
    assert cancelled["state"] == "cancelled"
    assert set(f.states().values()) == {"completed", "cancelled"}
    # The claimed jobs' late completions change nothing
    for job_type in ("b1", "j"):
        with pytest.raises(Conflict):
            f.ack(job_type)
    run(broker.advance_workflows())
    assert f.runnable() == []
    assert f.get()["state"] == "cancelled"


def test_a_unique_nested_step_that_conflicts_refuses_the_whole_workflow(
    flow: Any, enqueue: Any, redis_client: redis.Redis, keys: Keys
) -> None:
    unique = {"keys": ["type"], "on_conflict": "reject"}
    (holder,) = enqueue({"type": "u.step", "args": [], "options": {"unique": unique}})
    with pytest.raises(Duplicate):
        flow(chain(step("a"), group(step("b"), step("u.step", unique=unique))))
    assert list(redis_client.scan_iter(keys.workflow("*"))) == []
    assert {k.decode() for k in redis_client.scan_iter(keys.job("*"))} == {keys.job(holder)}


def test_a_waiting_unique_nested_step_cancelled_by_a_failure_frees_its_lock(
    flow: Any, enqueue: Any, redis_client: redis.Redis, keys: Keys
) -> None:
    unique = {"keys": ["type"], "on_conflict": "reject"}
    f = flow(chain(step("a", **ONCE), group(step("b"), step("u.step", unique=unique))))
    f.runnable()
    f.dead_letter("a")
    assert f.states() == {"0": "discarded", "1.0": "cancelled", "1.1": "cancelled"}
    assert f.get()["state"] == "failed"
    enqueue({"type": "u.step", "args": [], "options": {"unique": unique}})  # the lock is free


def test_nested_parts_take_their_own_options_over_the_outer_defaults(
    flow: Any, redis_client: redis.Redis, keys: Keys
) -> None:
    shape = {"type": "chain", "options": {"queue": "outer"}, "steps": [
        step("a"), {"type": "group", "options": {"queue": "inner"}, "jobs": [step("b"), step("c", queue="own")]},
    ]}
    f = flow(shape)
    ids = {s["id"]: s for s in f.get()["steps"]}
    assert ids["0"]["job_id"] is not None
    queues = {label: read_job(redis_client, keys, m)["queue"] for label, m in
              ((s["id"], s["job_id"] or _member(redis_client, keys, f.id, s["index"])) for s in f.get()["steps"])}
    assert queues == {"0": "outer", "1.0": "inner", "1.1": "own"}


def _member(redis_client: redis.Redis, keys: Keys, workflow_id: str, index: int) -> str:
    return str(redis_client.hget(keys.workflow(workflow_id), f"j{index}").decode())


def test_a_workflow_recorded_before_nesting_still_advances_by_its_old_rules(
    flow: Any, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a chain and a batch as an older server recorded them (no `open`, no result
    # sequences, no member contexts)
    old_chain = flow(chain(step("a"), step("b"), step("c")))
    old_batch = flow(batch(step("j1"), step("j2", **ONCE), on_success=step("cb.success"), on_failure=step("cb.failure")))
    for f in (old_chain, old_batch):
        record = keys.workflow(f.id)
        redis_client.hdel(record, "open", *[k for k in redis_client.hkeys(record) if k.startswith(b"q")])
        for i in range(int(redis_client.hget(record, "members"))):
            redis_client.hdel(keys.job(redis_client.hget(record, f"j{i}").decode()), "wf_ctx")
    # When / Then: each step still receives every earlier step's result
    assert old_chain.runnable() == ["a", "j1", "j2"]
    old_chain.ack("a", "A")
    assert old_chain.runnable() == ["b"]
    assert old_chain.parents("b") == ["A"]
    old_chain.ack("b", "B")
    assert old_chain.runnable() == ["c"]
    assert old_chain.parents("c") == ["A", "B"]
    old_chain.ack("c")
    assert old_chain.get()["state"] == "completed"
    # and the batch ends with its jobs, judging its callbacks by the workflow's failures
    old_batch.claimed.update(old_chain.claimed)
    old_batch.ack("j1", "J1")
    old_batch.dead_letter("j2")
    assert old_batch.get()["state"] == "failed"
    assert old_batch.runnable() == ["cb.failure"]
    assert old_batch.parents("cb.failure") == ["J1", None]
    old_batch.ack("cb.failure")
