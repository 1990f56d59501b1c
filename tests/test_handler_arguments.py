"""A job whose args do not bind to its handler's parameters fails once, for good, before the
handler runs: the real broker on a real Redis, each job run by the testing kit's embedded worker
(the pool's executor and middleware chain, settled through ack.lua / nack.lua)."""

from __future__ import annotations

import asyncio

import pytest

from runtime import Client, Draft, JobContext, handler
from runtime.binding import ArgumentCheck, InvalidArguments
from runtime.testing import RealContext

# Three attempts, retried at once: a bad job that were retried would use them all in one drain.
QUICK_RETRIES = {"max_attempts": 3, "initial_interval": "PT0.01S", "max_interval": "PT0.01S", "jitter": False}
RAN: list[str] = []  # ids of the jobs whose handler ran


@handler("args.greet")
async def greet(ctx: JobContext, name: str, greeting: str = "hello") -> str:
    RAN.append(ctx.job_id)
    return f"{greeting} {name}"


@handler("args.add")
def add(ctx: JobContext, a: int, b: int) -> int:
    """Sync: runs in a thread, as in a pool."""
    RAN.append(ctx.job_id)
    return a + b


@handler("args.any")
async def any_args(ctx: JobContext, *args: object) -> int:
    RAN.append(ctx.job_id)
    return len(args)


def enqueue(*drafts: Draft) -> list[str]:
    async def go() -> list[str]:
        async with Client() as client:
            return [i for i in await client.enqueue_many(drafts) if i is not None]

    return asyncio.run(go())


def test_args_that_do_not_bind_fail_once_without_running_the_handler(ojs_real: RealContext) -> None:
    RAN.clear()
    # When: too few, too many (async), too few (sync), and jobs that bind
    bad = enqueue(
        Draft(type="args.greet", args=[], options={"retry": QUICK_RETRIES}),
        Draft(type="args.greet", args=["ada", "hi", "extra"], options={"retry": QUICK_RETRIES}),
        Draft(type="args.add", args=[1], options={"retry": QUICK_RETRIES}),
    )
    good = enqueue(
        Draft(type="args.greet", args=["ada"], options={"retry": QUICK_RETRIES}),
        Draft(type="args.add", args=[1, 2], options={"retry": QUICK_RETRIES}),
        Draft(type="args.any", args=[1, 2, 3], options={"retry": QUICK_RETRIES}),
    )
    ojs_real.freeze_time()  # a retry, if any, would be due after QUICK_RETRIES' delay on this clock
    asyncio.run(ojs_real.drain())
    ojs_real.advance_time("PT1S")
    asyncio.run(ojs_real.drain())
    # Then: the ones that bind run as usual
    assert [ojs_real.assert_job_state(i, "completed")["result"] for i in good] == ["hello ada", 3, 3]
    # and the others end after one attempt, with no retry left although the policy allows three
    errors = []
    for job_id in bad:
        record = ojs_real.assert_job_state(job_id, "discarded")
        assert record["attempt"] == 1, record
        assert len(record["errors"]) == 1, record
        errors.append(record["error"])
    assert {e["type"] for e in errors} == {"invalid_arguments"}
    assert all(e["retryable"] is False and "backtrace" not in e for e in errors), errors
    assert all("\n" not in e["message"] for e in errors), errors
    too_few, too_many, sync_too_few = (e["message"] for e in errors)
    assert too_few.startswith("args.greet") and "missing a required argument: 'name'" in too_few
    assert "(name, greeting='hello')" in too_few and "got 0 args" in too_few
    assert too_many.startswith("args.greet") and "too many positional arguments" in too_many
    assert sync_too_few.startswith("args.add") and "missing a required argument: 'b'" in sync_too_few
    # The handler never ran for them
    assert set(RAN) == set(good)


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
