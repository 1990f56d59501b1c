"""Inline mode: an enqueue runs its job at once, through the middleware and the retry policy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime import Client, testing
from runtime.testing import JobFailed, TestContext
from tests.testing_kit import handlers


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def enqueue(*args: Any, **kwargs: Any) -> str | None:
    async with Client() as client:
        return await client.enqueue(*args, **kwargs)


async def enqueue_and_get(*args: Any, **kwargs: Any) -> dict[str, Any]:
    async with Client() as client:
        job_id = await client.enqueue(*args, **kwargs)
        assert job_id is not None
        return await client.get(job_id)


def test_the_handler_has_run_when_enqueue_returns(ojs_inline: TestContext) -> None:
    handlers.SEEN_BY_MIDDLEWARE.clear()
    job = run(enqueue_and_get("kit.echo", ["now"]))

    assert job["state"] == "completed" and job["result"] == {"value": "now", "attempt": 1}
    assert handlers.SEEN_BY_MIDDLEWARE == ["kit.echo#1"]
    ojs_inline.assert_performed("kit.echo", args=["now"], count=1)
    ojs_inline.assert_completed("kit.echo", queue="kit")
    assert run(ojs_inline.drain()).counts == {}  # nothing left to run


def test_sync_handlers_run_too(ojs_inline: TestContext) -> None:
    assert run(enqueue_and_get("kit.sync-double", [4]))["result"] == 8


def test_a_failed_attempt_is_retried_at_once_per_the_policy(ojs_inline: TestContext) -> None:
    job = run(enqueue_and_get("kit.flaky", [3]))

    assert job["state"] == "completed" and job["attempt"] == 3 and job["result"] == 3
    assert [r["outcome"] for r in ojs_inline.performed("kit.flaky")] == ["retried", "retried", "completed"]
    ojs_inline.assert_failed("kit.flaky", count=2)


def test_a_job_that_fails_for_good_raises_to_the_caller(ojs_inline: TestContext) -> None:
    with pytest.raises(JobFailed, match="ConnectionError: attempt 3 failed") as err:
        run(enqueue("kit.flaky", [99]))
    assert err.value.job["state"] == "discarded"
    ojs_inline.assert_failed("kit.flaky", count=3)
    ojs_inline.refute_completed("kit.flaky")

    with pytest.raises(JobFailed, match="Discard: not wanted"):
        run(enqueue("kit.gone"))
    assert [r["outcome"] for r in ojs_inline.performed("kit.gone")] == ["failed"]


def test_failure_injection_runs_before_the_handler(ojs_inline: TestContext) -> None:
    ojs_inline.fail_next("kit.echo", ConnectionError("down once"))
    job = run(enqueue_and_get("kit.echo", [1]))
    assert job["attempt"] == 2 and job["state"] == "completed"
    assert job["errors"][0]["message"] == "down once"


def test_jobs_enqueued_by_a_job_run_too(ojs_inline: TestContext) -> None:
    run(enqueue("kit.fan-out", [3]))
    ojs_inline.assert_completed("kit.echo", count=3)
    assert [r["args"] for r in ojs_inline.performed("kit.echo")] == [[0], [1], [2]]


def test_failures_can_be_kept_for_assertions_instead_of_raised() -> None:
    with testing.inline_mode(raise_failures=False) as ojs:
        job = run(enqueue_and_get("kit.gone"))
        assert job["state"] == "discarded"
        ojs.assert_failed("kit.gone")


def test_arguments_that_do_not_bind_fail_without_retry(ojs_inline: TestContext) -> None:
    with pytest.raises(JobFailed, match="invalid_arguments"):
        run(enqueue("kit.echo", [1, 2, 3]))
    ojs_inline.assert_failed("kit.echo", count=1)


def test_an_injected_exception_class_is_raised_like_an_instance(ojs_inline: TestContext) -> None:
    testing.fail_next("kit.echo", LookupError)
    job = run(enqueue_and_get("kit.echo", [1]))
    assert job["errors"][0]["type"] == "LookupError" and job["state"] == "completed"
