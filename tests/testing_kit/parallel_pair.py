"""Two tests that run at the same time, on two pytest-xdist workers, against ONE Redis, each in
real mode. Not collected by the main suite: test_parallel_isolation.py runs it in a child
``pytest -n 2`` and reads the outcome.

Each test enqueues three jobs, then waits (a barrier in Redis, outside both tests' prefixes)
until the other one has enqueued its three too, and only then asserts that it sees exactly its
own three, and drains exactly those. Under a shared store (every test on one key prefix) both
see six.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

from runtime import Client, JobContext, handler
from runtime.testing import RealContext

BARRIER_TIMEOUT_S = 30
NAMES = ("left", "right")


@handler("pair.job")
async def pair_job(ctx: JobContext, owner: str, n: int) -> str:
    return f"{owner}-{n}"


def meet(name: str, step: str) -> None:
    """Block until the other test reaches the same step (BLPOP: an event, not a sleep)."""
    run = os.environ["PAIR_RUN"]
    other = next(n for n in NAMES if n != name)
    inspect = redis.Redis.from_url(os.environ["PAIR_REDIS_URL"])
    try:
        inspect.rpush(f"pair:{run}:{step}:{other}", os.environ.get("PYTEST_XDIST_WORKER", "main"))
        if inspect.blpop([f"pair:{run}:{step}:{name}"], timeout=BARRIER_TIMEOUT_S) is None:
            pytest.fail(f"{name}: the other test never reached {step!r}: the two did not run in parallel")
    finally:
        inspect.close()


async def enqueue_three(owner: str) -> None:
    async with Client() as client:
        for n in range(3):
            await client.enqueue("pair.job", [owner, n])


def check(ojs_real: RealContext, name: str) -> None:
    asyncio.run(enqueue_three(name))
    meet(name, "enqueued")
    try:
        jobs = ojs_real.assert_enqueued("pair.job", count=3)
        assert {job["args"][0] for job in jobs} == {name}
        summary = asyncio.run(ojs_real.drain())
        assert summary.counts == {"completed": 3}
        assert sorted(run["result"] for run in summary.jobs) == [f"{name}-{n}" for n in range(3)]
    finally:
        meet(name, "asserted")  # neither cleans up before both have looked


def test_left(ojs_real: RealContext) -> None:
    check(ojs_real, "left")


def test_right(ojs_real: RealContext) -> None:
    check(ojs_real, "right")
