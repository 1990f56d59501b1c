"""Fake mode answers as the real broker does: the same scenario, run in both, ends the same."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from runtime import Client, Draft, testing
from runtime.errors import OJSError
from runtime.testing import TestContext
from tests.testing_kit import handlers  # noqa: F401  (registers the kit.* handlers)

UNIQUE = {"keys": ["type", "args"]}
Mode = Callable[[], AbstractContextManager[TestContext]]


@pytest.fixture(params=["fake", "real"])
def mode(request: pytest.FixtureRequest, ojs_redis_url: str) -> Iterator[Mode]:
    if request.param == "fake":
        yield testing.fake_mode
    else:
        yield lambda: testing.real_mode(ojs_redis_url)


def outcome(scenario: Callable[[Client], Any]) -> Any:
    """What the scenario returned, or the error class and status it raised."""
    async def go() -> Any:
        async with Client() as client:
            try:
                return await scenario(client)
            except OJSError as err:
                return (type(err).__name__, err.status)

    return asyncio.run(go())


async def two_unique_in_one_batch(client: Client) -> Any:
    return await client.enqueue_many([Draft(type="kit.echo", args=[1], options={"unique": UNIQUE}),
                                      Draft(type="kit.echo", args=[1], options={"unique": UNIQUE})])


async def two_unique_in_one_batch_ignored(client: Client) -> Any:
    policy = {**UNIQUE, "on_conflict": "ignore"}
    first, second = await client.enqueue_many([Draft(type="kit.echo", args=[1], options={"unique": policy}),
                                               Draft(type="kit.echo", args=[1], options={"unique": policy})])
    return first == second


async def a_batch_with_a_taken_id_inserts_nothing(client: Client) -> Any:
    taken = await client.enqueue("kit.echo", [0])
    try:
        await client.enqueue_many([Draft(type="kit.echo", args=[1]), Draft(type="kit.echo", args=[2], id=taken)])
    except OJSError as err:
        return type(err).__name__


async def cancel_twice(client: Client) -> Any:
    job_id = await client.enqueue("kit.echo", [1], delay_ms=60_000)
    assert job_id is not None
    first = await client.cancel(job_id)
    try:
        await client.cancel(job_id)
    except OJSError as err:
        return first, type(err).__name__, (await client.get(job_id))["state"]


async def get_missing(client: Client) -> Any:
    return await client.get("01900000-0000-7000-8000-000000000000")


async def replace_a_stored_holder(client: Client) -> Any:
    policy = {**UNIQUE, "on_conflict": "replace"}
    first = await client.enqueue("kit.echo", [1], unique=policy, meta={"n": 1})
    second = await client.enqueue("kit.echo", [1], unique=policy, meta={"n": 2})
    return first != second, (await client.get(first))["state"], (await client.get(second))["meta"]


async def replace_a_twin_in_one_batch(client: Client) -> Any:
    policy = {**UNIQUE, "on_conflict": "replace"}
    first, second = await client.enqueue_many([
        Draft(type="kit.echo", args=[1], meta={"n": 1}, options={"unique": policy}),
        Draft(type="kit.echo", args=[1], meta={"n": 2}, options={"unique": policy}),
    ])
    assert second is not None
    return first == second, (await client.get(second))["meta"]


async def replace_keeping_the_schedule(client: Client) -> Any:
    policy = {**UNIQUE, "on_conflict": "replace_except_schedule"}
    first = await client.enqueue("kit.echo", [1], unique=policy, scheduled_at="2030-01-01T00:00:00Z")
    second = await client.enqueue("kit.echo", [1], unique=policy)
    assert first is not None and second is not None
    kept = await client.get(second)
    return (await client.get(first))["state"], kept["state"], kept["scheduled_at"]


async def invalid_options(client: Client) -> Any:
    refused = []
    for options in ({"priority": 1000}, {"retry": {"initial_interval": "PT0S"}}, {"scheduled_at": "tomorrow"},
                    {"unique": {"keys": ["nonsense"]}}, {"timeout_ms": -1}):
        try:
            await client.enqueue("kit.echo", [1], **options)
        except OJSError as err:
            refused.append((type(err).__name__, err.status, err.message))
    return refused


@pytest.mark.parametrize("scenario", [two_unique_in_one_batch, two_unique_in_one_batch_ignored,
                                      a_batch_with_a_taken_id_inserts_nothing, cancel_twice, get_missing,
                                      replace_a_stored_holder, replace_a_twin_in_one_batch,
                                      replace_keeping_the_schedule])
def test_fake_mode_matches_the_broker(mode: Mode, scenario: Callable[[Client], Any]) -> None:
    with mode() as ojs:
        got = outcome(scenario)
        jobs = sorted((j["args"], j["state"]) for j in ojs.all_enqueued())
    expected = EXPECTED[scenario.__name__]
    assert (got, jobs) == expected


EXPECTED: dict[str, Any] = {
    "two_unique_in_one_batch": (("Duplicate", 409), []),
    "two_unique_in_one_batch_ignored": (True, [([1], "available")]),
    "a_batch_with_a_taken_id_inserts_nothing": ("Duplicate", [([0], "available")]),
    "cancel_twice": (("scheduled", "Conflict", "cancelled"), [([1], "cancelled")]),
    "get_missing": (("NotFound", 404), []),
    "replace_a_stored_holder": ((True, "cancelled", {"n": 2}), [([1], "available"), ([1], "cancelled")]),
    "replace_a_twin_in_one_batch": ((True, {"n": 2}), [([1], "available")]),
    "replace_keeping_the_schedule": (("cancelled", "scheduled", "2030-01-01T00:00:00Z"),
                                     [([1], "cancelled"), ([1], "scheduled")]),
}


def test_a_job_cancelled_while_it_runs_stays_cancelled(mode: Mode) -> None:
    with mode() as ojs:
        job_id = outcome(lambda client: client.enqueue("kit.self-cancel"))
        summary = asyncio.run(ojs.drain())
        assert summary.counts == {"cancelled": 1}
        assert "result" not in ojs.assert_job_state(job_id, "cancelled")


def test_a_retry_resumes_from_the_checkpoint_of_the_attempt_before(mode: Mode) -> None:
    with mode() as ojs:
        ojs.freeze_time()
        job_id = outcome(lambda client: client.enqueue("kit.resumable"))
        asyncio.run(ojs.drain())
        job = ojs.assert_job_state(job_id, "retryable")
        assert job["progress"] == 0.5
        ojs.advance_time("1s")
        summary = asyncio.run(ojs.drain())
        assert summary.jobs[0]["result"] == {"step": 1}


def test_the_same_events_are_emitted(mode: Mode) -> None:
    with mode() as ojs:
        ojs.freeze_time()
        retried = outcome(lambda client: client.enqueue("kit.flaky", [2]))
        asyncio.run(ojs.drain())
        ojs.advance_time("PT10M")
        asyncio.run(ojs.drain())
        later = outcome(lambda client: client.enqueue("kit.echo", [1], delay_ms=1000))
        outcome(lambda client: client.cancel(later))
        events = [(e["type"], e["subject"]) for e in ojs.events()]
        assert ojs.events("job.completed")[0]["data"]["job_type"] == "kit.flaky"
    assert events == [
        ("job.enqueued", retried), ("job.started", retried), ("job.failed", retried), ("job.retrying", retried),
        ("job.started", retried), ("job.completed", retried),
        ("job.scheduled", later), ("job.cancelled", later),
    ]


def test_invalid_options_are_refused_with_the_same_errors(ojs_redis_url: str) -> None:
    with testing.fake_mode():
        fake = outcome(invalid_options)
    with testing.real_mode(ojs_redis_url):
        real = outcome(invalid_options)
    assert fake == real and len(real) == 5, (fake, real)
