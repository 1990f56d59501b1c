"""A job whose args do not bind to its handler's parameters fails once, for good, before the
handler runs: real `ojs-run` pools, a real Redis."""

from __future__ import annotations

import msgspec
import pytest
import redis

from runtime import Client, Draft
from runtime.binding import ArgumentCheck, InvalidArguments
from tests.fixtures.procs import Start, job, run, states, wait_until

HANDLERS = "tests.fixtures.argument_handlers"
# Three attempts, retried at once: a bad job that were retried would use them all within the test.
QUICK_RETRIES = {"max_attempts": 3, "initial_interval": "PT0.01S", "max_interval": "PT0.01S", "jitter": False}


def enqueue(redis_url: str, *drafts: Draft) -> list[str]:
    async def go() -> list[str]:
        async with Client(redis_url) as client:
            return [i for i in await client.enqueue_many(drafts) if i is not None]

    ids: list[str] = run(go())
    return ids


@pytest.mark.slow
def test_args_that_do_not_bind_fail_once_without_running_the_handler(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given
    runtime = start("--processes", "1", "--no-http", module=HANDLERS)
    runtime.wait_ready(1)
    # When: too few, too many (async), too few (sync), and jobs that bind
    bad = enqueue(
        redis_url,
        Draft(type="args.greet", args=[], options={"retry": QUICK_RETRIES}),
        Draft(type="args.greet", args=["ada", "hi", "extra"], options={"retry": QUICK_RETRIES}),
        Draft(type="args.add", args=[1], options={"retry": QUICK_RETRIES}),
    )
    good = enqueue(
        redis_url,
        Draft(type="args.greet", args=["ada"], options={"retry": QUICK_RETRIES}),
        Draft(type="args.add", args=[1, 2], options={"retry": QUICK_RETRIES}),
        Draft(type="args.any", args=[1, 2, 3], options={"retry": QUICK_RETRIES}),
    )
    # Then: the ones that bind run as usual
    wait_until(lambda: states(redis_client, good) == ["completed"] * 3, what="the well-bound jobs to complete")
    assert [job(redis_client, i)["result"] for i in good] == ['"hello ada"', "3", "3"]
    # and the others end after one attempt, with no retry left although the policy allows three
    wait_until(lambda: states(redis_client, bad) == ["discarded"] * 3, what="the badly bound jobs to end")
    errors = []
    for job_id in bad:
        record = job(redis_client, job_id)
        assert record["attempt"] == "1", record
        assert "e2" not in record
        errors.append(msgspec.json.decode(record["error"]))
    assert {e["type"] for e in errors} == {"invalid_arguments"}
    assert all(e["retryable"] is False and "backtrace" not in e for e in errors), errors
    assert all("\n" not in e["message"] for e in errors), errors
    too_few, too_many, sync_too_few = (e["message"] for e in errors)
    assert too_few.startswith("args.greet") and "missing a required argument: 'name'" in too_few
    assert "(name, greeting='hello')" in too_few and "got 0 args" in too_few
    assert too_many.startswith("args.greet") and "too many positional arguments" in too_many
    assert sync_too_few.startswith("args.add") and "missing a required argument: 'b'" in sync_too_few
    # The handler never ran for them
    ran = {x.decode() for x in redis_client.lrange("argtest:ran", 0, -1)}
    assert ran == set(good)


async def _needs_a_keyword(ctx: object, *, key: str) -> None: ...


def test_argument_check_names_what_did_not_bind_and_leaves_unintrospectable_handlers_to_the_call() -> None:
    # A required keyword-only parameter can never be given by positional args
    with pytest.raises(InvalidArguments, match=r"^kw\.only takes \(\*, key\), got 0 args: missing a required argument: 'key'$"):
        ArgumentCheck("kw.only", _needs_a_keyword).check([])
    # A callable without a signature is not judged here
    ArgumentCheck("no.signature", max).check([1, 2, 3])
    # The answer per count is remembered, and the same for every job with that many args
    check = ArgumentCheck("args.greet", lambda ctx, name: None)
    for _ in range(3):
        check.check(["ada"])
        with pytest.raises(InvalidArguments, match="too many positional arguments"):
            check.check(["ada", "extra"])
