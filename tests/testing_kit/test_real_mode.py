"""Real mode: the broker's scripts on a real Redis, drained by an embedded worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from runtime import Client, Draft, testing
from runtime.testing import RealContext
from tests.testing_kit import handlers

PAST_THE_BACKOFF = "PT10M"  # handlers.NO_JITTER's first retry delay


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def enqueue(*args: Any, **kwargs: Any) -> str:
    async with Client() as client:
        job_id = await client.enqueue(*args, **kwargs)
        assert job_id is not None
        return job_id


def test_drain_runs_everything_including_what_the_jobs_enqueue(ojs_real: RealContext) -> None:
    handlers.SEEN_BY_MIDDLEWARE.clear()
    parent = run(enqueue("kit.fan-out", [3]))

    summary = run(ojs_real.drain())

    assert summary.counts == {"completed": 4}
    assert [run_["type"] for run_ in summary.jobs] == ["kit.fan-out", "kit.echo", "kit.echo", "kit.echo"]
    assert handlers.SEEN_BY_MIDDLEWARE == ["kit.fan-out#1", "kit.echo#1", "kit.echo#1", "kit.echo#1"]
    ojs_real.assert_job_state(parent, "completed")
    ojs_real.assert_completed("kit.echo", count=3)
    ojs_real.assert_enqueued("kit.echo", queue="kit", count=3)
    assert {job["state"] for job in ojs_real.all_enqueued()} == {"completed"}
    assert run(ojs_real.drain()).counts == {}


def test_jobs_live_under_the_tests_own_prefix_and_are_deleted_after_it(redis_server: Any) -> None:
    inspect = redis.Redis.from_url(redis_server.url)
    try:
        with testing.real_mode(redis_server.url) as ojs:
            job_id = run(enqueue("kit.echo", [1]))
            assert inspect.exists(f"{ojs.key_prefix}job:{job_id}")
            assert not inspect.exists(f"{{ojs}}:job:{job_id}")
        assert list(inspect.scan_iter(match=ojs.key_prefix.replace("{", "\\{").replace("}", "\\}") + "*")) == []
    finally:
        inspect.close()


def test_two_contexts_on_one_redis_do_not_see_each_others_jobs(redis_server: Any) -> None:
    with testing.real_mode(redis_server.url) as first:
        run(enqueue("kit.echo", ["first"]))
        with testing.real_mode(redis_server.url) as second:
            run(enqueue("kit.echo", ["second"]))
            second.assert_enqueued("kit.echo", count=1, args=["second"])
            assert run(second.drain()).counts == {"completed": 1}
        first.assert_enqueued("kit.echo", count=1, args=["first"])
        first.refute_performed("kit.echo")


def test_time_control_makes_a_retry_due(ojs_real: RealContext) -> None:
    ojs_real.freeze_time("2026-03-01T12:00:00Z")
    job_id = run(enqueue("kit.flaky", [2]))

    assert run(ojs_real.drain()).counts == {"retried": 1}
    job = ojs_real.assert_job_state(job_id, "retryable")
    assert job["next_attempt_at"] == "2026-03-01T12:10:00.000Z"
    assert run(ojs_real.drain()).counts == {}  # the backoff has not passed on the test clock

    ojs_real.advance_time("PT9M59S")
    assert run(ojs_real.drain()).counts == {}
    ojs_real.advance_time("1s")
    assert run(ojs_real.drain()).counts == {"completed": 1}
    assert ojs_real.assert_job_state(job_id, "completed")["attempt"] == 2


def test_time_control_makes_a_cron_tick(ojs_real: RealContext) -> None:
    ojs_real.freeze_time("2026-03-01T12:00:30Z")
    view = run(ojs_real.register_cron("kit-every-minute", "* * * * *", "kit.echo", ["tick"]))
    assert view["next_run_at"].startswith("2026-03-01T12:01:00")
    assert run(ojs_real.drain()).counts == {}

    ojs_real.advance_time("30s")
    summary = run(ojs_real.drain())
    assert summary.counts == {"completed": 1} and summary.jobs[0]["args"] == ["tick"]

    ojs_real.advance_time("PT1M")
    assert run(ojs_real.drain()).counts == {"completed": 1}
    ojs_real.assert_completed("kit.echo", args=["tick"], count=2)


def test_scheduled_jobs_run_once_the_clock_reaches_them(ojs_real: RealContext) -> None:
    ojs_real.freeze_time("2026-03-01T12:00:00Z")
    job_id = run(enqueue("kit.echo", [1], scheduled_at="2026-03-02T12:00:00Z"))
    ojs_real.assert_job_state(job_id, "scheduled")
    assert run(ojs_real.drain()).counts == {}
    ojs_real.advance_time("P1D")
    assert run(ojs_real.drain()).counts == {"completed": 1}


def test_failure_injection_goes_through_the_brokers_retry_policy(ojs_real: RealContext) -> None:
    ojs_real.fail_all("kit.echo", PermissionError("denied"))
    run(enqueue("kit.echo", [1], retry={"max_attempts": 2, "initial_interval": "PT1S", "jitter": False}))
    ojs_real.freeze_time()
    assert run(ojs_real.drain()).counts == {"retried": 1}
    ojs_real.advance_time("1s")
    summary = run(ojs_real.drain())
    assert summary.counts == {"failed": 1}
    assert summary.jobs[0]["error"]["type"] == "PermissionError"
    ojs_real.assert_failed("kit.echo", count=2)


def test_workflows_are_orchestrated_by_the_broker(ojs_real: RealContext) -> None:
    async def go() -> None:
        async with Client() as client:
            await client.chain([Draft(type="kit.echo", args=["a"]), Draft(type="kit.sync-double", args=[5])])

    run(go())
    ojs_real.assert_workflow_created("chain", step_count=2, step_types=["kit.echo", "kit.sync-double"])
    summary = run(ojs_real.drain())
    assert [r["type"] for r in summary.jobs] == ["kit.echo", "kit.sync-double"]
    assert summary.counts == {"completed": 2}


def test_drain_of_one_queue_leaves_the_others(ojs_real: RealContext) -> None:
    run(enqueue("kit.echo", [1]))  # queue kit
    run(enqueue("kit.sync-double", [1]))  # queue default
    assert run(ojs_real.drain("default")).counts == {"completed": 1}
    ojs_real.refute_performed("kit.echo")


def test_scheduled_jobs_are_not_forced_in_real_mode(ojs_real: RealContext) -> None:
    with pytest.raises(NotImplementedError, match="advance_time"):
        run(ojs_real.drain(with_scheduled=True))


async def blocked_in_xread(url: str) -> None:
    """Until a connection of this Redis waits in XREAD (the waiter has seen the job unfinished)."""
    inspect = AsyncRedis.from_url(url)
    try:
        for _ in range(500):
            if any(c.get("cmd") == "xread" for c in await inspect.client_list()):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("nothing ever waited in XREAD")
    finally:
        await inspect.aclose()


def test_wait_for_state_wakes_on_the_brokers_events(ojs_real: RealContext) -> None:
    async def scenario() -> tuple[dict[str, Any], Any]:
        job_id = await enqueue("kit.echo", ["waited"])
        waiting = asyncio.create_task(ojs_real.wait_for_state(job_id, "completed", timeout_s=30))
        await blocked_in_xread(ojs_real.redis_url)
        summary = await ojs_real.drain()  # its events wake the waiter, long before its timeout
        return await waiting, summary

    job, summary = run(scenario())
    assert job["state"] == "completed" and job["result"] == {"value": "waited", "attempt": 1}
    assert summary.counts == {"completed": 1}


def test_wait_for_state_says_what_the_job_is_when_it_times_out(ojs_real: RealContext) -> None:
    job_id = run(enqueue("kit.echo", [1]))
    with pytest.raises(AssertionError, match=r"still 'available' after 0.2 s \(waiting for completed\)"):
        run(ojs_real.wait_for_state(job_id, "completed", timeout_s=0.2))



def test_without_a_url_real_mode_starts_an_embedded_redis_once_per_process() -> None:
    with testing.real_mode() as first:
        run(enqueue("kit.echo", [1]))
        assert run(first.drain()).counts == {"completed": 1}
    with testing.real_mode() as second:
        assert second.redis_url == first.redis_url and second.key_prefix != first.key_prefix
        second.refute_enqueued("kit.echo")


def test_drain_stops_at_max_jobs_and_at_its_timeout(ojs_real: RealContext) -> None:
    for n in range(3):
        run(enqueue("kit.echo", [n]))
    first = run(ojs_real.drain(max_jobs=2))
    assert first.counts == {"completed": 2} and not first.timed_out
    stopped = run(ojs_real.drain(timeout_s=-1))
    assert stopped.counts == {} and stopped.timed_out
    assert run(ojs_real.drain()).counts == {"completed": 1}
