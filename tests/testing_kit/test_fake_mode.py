"""Fake mode: enqueues recorded in memory, validated as the broker validates them; no Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from runtime import Client, Draft, testing
from runtime.broker.workflows import WorkflowRequest
from runtime.client import Client as ClientClass
from runtime.errors import Conflict, Duplicate, OJSError
from runtime.testing import TestContext
from tests.testing_kit import handlers

UUID7_VERSION = "7"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def enqueue(*args: Any, **kwargs: Any) -> str | None:
    async with Client() as client:
        return await client.enqueue(*args, **kwargs)


def test_an_enqueue_is_recorded_with_its_full_envelope_and_never_runs(ojs_fake: TestContext) -> None:
    job_id = run(enqueue("kit.echo", ["hi"], meta={"tenant": "t1"}, priority=5))

    (job,) = ojs_fake.assert_enqueued("kit.echo", args=["hi"], queue="kit", meta={"tenant": "t1"})
    assert job["id"] == job_id and job_id is not None and job_id[14] == UUID7_VERSION
    assert job["state"] == "available" and job["priority"] == 5 and job["attempt"] == 0
    assert job["specversion"] == "1.0" and job["created_at"].endswith("Z")
    ojs_fake.refute_performed("kit.echo")
    assert run(_get(job_id))["state"] == "available"


async def _get(job_id: str) -> dict[str, Any]:
    async with Client() as client:
        return await client.get(job_id)


@pytest.mark.parametrize("options", [
    {"priority": 1000},
    {"retry": {"max_attempts": 3, "initial_interval": "PT0S"}},
    {"scheduled_at": "tomorrow"},
    {"unique": {"keys": ["nonsense"]}},
])
def test_invalid_options_are_rejected_with_the_brokers_own_error(ojs_fake: TestContext, options: dict[str, Any]) -> None:
    with pytest.raises(OJSError) as err:
        run(enqueue("kit.echo", [1], **options))
    assert 400 <= err.value.status < 500
    assert ojs_fake.all_enqueued() == []


def test_assert_enqueued_matches_args_queue_meta_and_count(ojs_fake: TestContext) -> None:
    run(enqueue("kit.echo", [1]))
    run(enqueue("kit.echo", [1]))
    run(enqueue("kit.echo", [2], queue="other"))

    assert len(ojs_fake.assert_enqueued("kit.echo", args=[1], count=2)) == 2
    ojs_fake.assert_enqueued("kit.echo", queue="other", count=1)
    with pytest.raises(AssertionError, match=r"expected 3 .*kit\.echo.*found 2"):
        ojs_fake.assert_enqueued("kit.echo", args=[1], count=3)
    with pytest.raises(AssertionError, match=r"args \[2\] != \[9\]"):
        ojs_fake.assert_enqueued("kit.echo", args=[9], queue="other")
    ojs_fake.refute_enqueued("kit.echo", args=[3])
    with pytest.raises(AssertionError, match="unexpected"):
        ojs_fake.refute_enqueued("kit.echo", queue="other")
    assert [j["args"] for j in ojs_fake.all_enqueued(queue="kit")] == [[1], [1]]


def test_module_level_helpers_act_on_the_current_context(ojs_fake: TestContext) -> None:
    run(enqueue("kit.echo", ["x"]))
    testing.assert_enqueued("kit.echo", args=["x"])
    testing.clear_all()
    testing.refute_enqueued("kit.echo")
    assert testing.all_enqueued() == []


def test_defaults_of_the_registered_handler_and_enqueue_middleware_apply(ojs_fake: TestContext) -> None:
    seen: list[str] = []

    async def tag(draft: Draft, call_next: Any) -> Any:
        seen.append(draft.type)
        draft.meta["tagged"] = True
        return await call_next()

    async def go() -> None:
        async with Client(middleware=[tag]) as client:
            await client.enqueue("kit.flaky", [1])

    run(go())
    (job,) = ojs_fake.assert_enqueued("kit.flaky", meta={"tagged": True})
    assert seen == ["kit.flaky"] and job["max_attempts"] == 3 and job["retry"]["initial_interval"] == "PT10M"


def test_unique_jobs_are_deduplicated_in_memory(ojs_fake: TestContext) -> None:
    first = run(enqueue("kit.echo", [1], unique={"keys": ["type", "args"], "on_conflict": "ignore"}))
    again = run(enqueue("kit.echo", [1], unique={"keys": ["type", "args"], "on_conflict": "ignore"}))
    assert first == again
    with pytest.raises(Duplicate):
        run(enqueue("kit.echo", [1], unique={"keys": ["type", "args"]}))
    ojs_fake.assert_enqueued("kit.echo", count=1)


def test_cancel_follows_the_state_machine(ojs_fake: TestContext) -> None:
    async def go() -> None:
        async with Client() as client:
            job_id = await client.enqueue("kit.echo", [1])
            assert job_id is not None
            assert await client.cancel(job_id) == "available"
            assert (await client.get(job_id))["state"] == "cancelled"
            with pytest.raises(Conflict):
                await client.cancel(job_id)

    run(go())


def test_workflows_are_recorded_and_their_first_steps_enqueued(ojs_fake: TestContext) -> None:
    async def go() -> None:
        async with Client() as client:
            await client.chain([Draft(type="kit.echo", args=[1]), Draft(type="kit.sync-double", args=[2])], name="pipe")

    run(go())
    ojs_fake.assert_workflow_created("chain", name="pipe", step_count=2, step_types=["kit.echo", "kit.sync-double"])
    ojs_fake.assert_enqueued("kit.echo", args=[1])
    ojs_fake.refute_enqueued("kit.sync-double")  # waits for the first step
    with pytest.raises(AssertionError, match="step_count 2 != 3"):
        ojs_fake.assert_workflow_created("chain", step_count=3)


def test_a_nested_workflow_is_recorded_with_its_steps_in_order_and_without_its_callbacks(
    ojs_fake: TestContext,
) -> None:
    shape = {"type": "chain", "steps": [
        {"type": "kit.a"},
        {"type": "batch", "jobs": [{"type": "kit.b"}], "callbacks": {"on_complete": {"type": "kit.cb"}}},
        {"type": "kit.c"},
    ]}
    ojs_fake.record_workflow(msgspec.convert(shape, WorkflowRequest), {"id": "w1"})
    ojs_fake.assert_workflow_created("chain", step_count=3, step_types=["kit.a", "kit.b", "kit.c"])


def test_drain_runs_the_recorded_jobs_through_the_middleware(ojs_fake: TestContext) -> None:
    handlers.SEEN_BY_MIDDLEWARE.clear()
    run(enqueue("kit.echo", ["a"]))
    run(enqueue("kit.sync-double", [21]))

    summary = run(ojs_fake.drain())

    assert summary.counts == {"completed": 2}
    assert handlers.SEEN_BY_MIDDLEWARE == ["kit.echo#1", "kit.sync-double#1"]
    ojs_fake.assert_completed("kit.sync-double", args=[21])
    assert [j["result"] for j in summary.jobs] == [{"value": "a", "attempt": 1}, 42]


def test_drain_follows_the_retry_policy_and_time_control_makes_the_retry_due(ojs_fake: TestContext) -> None:
    ojs_fake.freeze_time("2026-03-01T12:00:00Z")
    job_id = run(enqueue("kit.flaky", [2]))

    first = run(ojs_fake.drain())
    assert first.counts == {"retried": 1}
    ojs_fake.assert_job_state(job_id, "retryable")
    ojs_fake.assert_failed("kit.flaky")
    assert run(ojs_fake.drain()).counts == {}  # the backoff (10 minutes) has not passed

    ojs_fake.advance_time("PT10M")
    assert run(ojs_fake.drain()).counts == {"completed": 1}
    ojs_fake.assert_job_state(job_id, "completed")
    ojs_fake.assert_completed("kit.flaky", count=1)


def test_scheduled_jobs_wait_for_the_test_clock(ojs_fake: TestContext) -> None:
    ojs_fake.freeze_time("2026-03-01T12:00:00Z")
    job_id = run(enqueue("kit.echo", [1], delay_ms=60_000))
    ojs_fake.assert_job_state(job_id, "scheduled")
    assert run(ojs_fake.drain()).counts == {}
    assert run(ojs_fake.drain(with_scheduled=True)).counts == {"completed": 1}


def test_failure_injection(ojs_fake: TestContext) -> None:
    ojs_fake.fail_next("kit.echo", TimeoutError("smtp timeout"))
    run(enqueue("kit.echo", [1]))
    run(ojs_fake.drain())
    (failed,) = ojs_fake.assert_failed("kit.echo")
    assert failed["error"]["type"] == "TimeoutError" and failed["error"]["message"] == "smtp timeout"

    ojs_fake.fail_all("kit.sync-double", "always down")
    run(enqueue("kit.sync-double", [1], retry={"max_attempts": 2}))
    summary = run(ojs_fake.drain(with_scheduled=True))
    assert summary.counts == {"completed": 1, "retried": 1, "failed": 1}  # kit.echo's retry, then 2 x double
    ojs_fake.refute_completed("kit.sync-double")


def test_the_real_client_is_restored_after_the_context() -> None:
    original = ClientClass.__init__
    with testing.fake_mode():
        assert ClientClass.__init__ is not original
    assert ClientClass.__init__ is original
    with pytest.raises(RuntimeError, match="no testing mode"):
        testing.assert_enqueued("kit.echo")


def test_each_context_starts_empty() -> None:
    with testing.fake_mode() as first:
        run(enqueue("kit.echo", [1]))
        first.assert_enqueued("kit.echo")
    with testing.fake_mode() as second:
        second.refute_enqueued("kit.echo")


def test_a_job_past_its_expiry_on_the_test_clock_never_runs(ojs_fake: TestContext) -> None:
    ojs_fake.freeze_time("2026-03-01T12:00:00Z")
    job_id = run(enqueue("kit.echo", [1], expires_at="+PT1M"))
    ojs_fake.advance_time("PT1M")
    assert run(ojs_fake.drain()).counts == {}
    job = ojs_fake.assert_job_state(job_id, "discarded")
    assert job["error"]["type"] == "expired" and job["expired_at"] == "2026-03-01T12:01:00.000Z"


def test_drain_stops_at_max_jobs_and_at_its_timeout(ojs_fake: TestContext) -> None:
    for n in range(3):
        run(enqueue("kit.echo", [n]))
    first = run(ojs_fake.drain(max_jobs=2))
    assert first.counts == {"completed": 2} and not first.timed_out
    stopped = run(ojs_fake.drain(timeout_s=-1))
    assert stopped.counts == {} and stopped.timed_out
    assert run(ojs_fake.drain()).counts == {"completed": 1}


def test_task_handles_enqueue_into_each_tests_own_context_one_after_the_other() -> None:
    # The sync variant runs on one long-lived private loop, whose default client outlives any one
    # test: the second context must still get its own job, not the first one's store.
    for value in ("first", "second"):
        with testing.fake_mode() as context:
            assert handlers.echo.enqueue_sync(value).id
            assert run(_handle_enqueue(f"{value} async"))
            context.assert_enqueued("kit.echo", args=[value], count=1)
            context.assert_enqueued("kit.echo", args=[f"{value} async"], count=1)
            assert len(context.all_enqueued()) == 2


async def _handle_enqueue(value: str) -> str:
    return str((await handlers.echo.enqueue(value)).id)
