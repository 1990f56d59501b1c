"""Tenancy at its seams: a cancelled waiting step, a tenant fetch behind another tenant's backlog
(its scan bounded, its job reached with version ranges too)."""
from __future__ import annotations

from typing import Any

import redis

from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.job_versions import parse_range
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.envelope import ErrorInfo
from tests.broker.conftest import Run
from tests.broker.test_tenants import drain, enqueue_many, ids_of, tenant_body


def test_a_tenants_waiting_step_cancelled_by_its_failed_dependency_leaves_the_tenant_set(
    broker: Broker, run: Run[Any],
) -> None:
    # Given: a two-step chain of tenant acme's jobs (meta.tenant_id)
    steps = [{"type": "s.one", "args": [], "meta": {"tenant_id": "acme"}, "retry": {"max_attempts": 1}},
             {"type": "s.two", "args": [], "meta": {"tenant_id": "acme"}}]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    # When: the first step fails for good, so the waiting second is cancelled (advance.lua cancel_member)
    (first,) = run(broker.fetch(["default"]))
    run(broker.nack(first[b"id"].decode(), ErrorInfo(message="no")))
    run(broker.advance_workflows())
    # Then: nothing of acme's is unfinished any more
    assert run(check_integrity(broker.redis, broker.keys)) == []
    members = run(broker.redis.smembers(broker.keys.tenant_jobs("acme")))
    assert members == set()


def test_a_tenant_fetch_scans_a_bounded_part_of_another_tenants_backlog(
    broker: Broker, run: Run[Any], redis_client: redis.Redis,
) -> None:
    # Given: 3,000 of tenant a's jobs
    enqueue_many(broker, run, "a", 3_000)
    redis_client.config_resetstat()
    # When: tenant b (which has none) polls once
    assert run(broker.fetch(["default"], count=1, tenant="b")) == []
    # Then: the look is bounded (RL_SCAN = 256 held, then 256 more from a cursor), not the whole queue
    stats = redis_client.info("commandstats")
    popped = stats.get("cmdstat_zpopmin", {}).get("calls", 0)
    readded = stats.get("cmdstat_zadd", {}).get("calls", 0)
    print("zpopmin", popped, "zadd", readded)
    assert popped <= 600, (popped, readded)


def test_fetch_args_room_versions_and_tenant_together(broker: Broker, run: Run[Any], enqueue: Any) -> None:
    from runtime.broker.job_versions import parse_range
    a_v1, a_v3, b_v1, other = enqueue(
        dict(tenant_body("a", "t.v"), version="1.0"), dict(tenant_body("a", "t.v"), version="3.0"),
        dict(tenant_body("b", "t.v"), version="1.0"), tenant_body("a", "t.other"))
    got = ids_of(run(broker.fetch(["default"], count=10, type_room={"t.other": 0, "t.v": 5},
                                  version_ranges={"t.v": parse_range(">=1.0 <2.0")}, tenant="a")))
    assert got == [a_v1]
    got = ids_of(run(broker.fetch(["default"], count=10, version_ranges={"t.v": parse_range(">=3.0")}, tenant="b")))
    assert got == []
    got = ids_of(run(broker.fetch(["default"], count=10, type_room={"t.v": 1}, tenant="b")))
    assert got == [b_v1]
    for i in (a_v1, b_v1):
        run(broker.ack(i))
    got = ids_of(run(broker.fetch(["default"], count=10)))
    assert set(got) == {a_v3, other}
    for i in got:
        run(broker.ack(i))


def test_a_tenant_fetch_with_version_ranges_reaches_its_job_behind_another_tenants_backlog(
    broker: Broker, run: Run[Any],
) -> None:
    # Given: as in test_tenants' scan-bound test, 600 of a's jobs ahead of b's one
    enqueue_many(broker, run, "a", 600, priority=5)
    (b_job,) = enqueue_many(broker, run, "b", 1)
    # When: b's worker, which declares versions of some type (HTTP `versions`), fetches a few times
    ranges = {"unrelated.type": parse_range(">=1.0")}
    got = [ids_of(run(broker.fetch(["default"], count=1, tenant="b", version_ranges=ranges))) for _ in range(5)]
    # Then: it gets its job, as a fetch without versions does
    assert [b_job] in got, got
    run(broker.ack(b_job))
    drain(broker, run, count=100)
