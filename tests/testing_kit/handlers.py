"""Handlers the testing-kit tests run (job types of their own, so no other test registers them)."""

from __future__ import annotations

from typing import Any

from runtime import Client, Discard, JobContext, execution_middleware, handler

SEEN_BY_MIDDLEWARE: list[str] = []

NO_JITTER = {"max_attempts": 3, "initial_interval": "PT10M", "max_interval": "PT1H", "backoff_coefficient": 2.0,
             "jitter": False}


@handler("kit.echo", queue="kit")
async def echo(ctx: JobContext, value: Any) -> dict[str, Any]:
    return {"value": value, "attempt": ctx.attempt}


@handler("kit.sync-double")
def sync_double(ctx: JobContext, n: int) -> int:
    return n * 2


@handler("kit.flaky", retry=NO_JITTER)
async def flaky(ctx: JobContext, succeed_from: int) -> int:
    if ctx.attempt < succeed_from:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@handler("kit.gone")
async def gone(ctx: JobContext) -> None:
    raise Discard("not wanted")


@handler("kit.fan-out")
async def fan_out(ctx: JobContext, count: int) -> int:
    """Enqueues `count` kit.echo jobs from inside a job, as application code does."""
    async with Client() as client:
        for n in range(count):
            await client.enqueue("kit.echo", [n])
    return count


@execution_middleware.add
async def kit_recorder(ctx: JobContext, call_next: Any) -> Any:
    if ctx.job.type.startswith("kit."):
        SEEN_BY_MIDDLEWARE.append(f"{ctx.job.type}#{ctx.attempt}")
    return await call_next()


@handler("kit.self-cancel")
async def self_cancel(ctx: JobContext) -> str:
    """Its job is cancelled while it runs (as an operator would): its result is never recorded."""
    async with Client() as client:
        await client.cancel(ctx.job_id)
    return "finished anyway"


@handler("kit.resumable", retry={"max_attempts": 2, "initial_interval": "PT1S", "jitter": False})
async def resumable(ctx: JobContext) -> Any:
    """Checkpoints, fails its first attempt, and returns the checkpoint its second one starts from."""
    if ctx.attempt == 1:
        await ctx.progress(0.5, "half way", checkpoint={"step": 1})
        raise ConnectionError("lost half way")
    return ctx.last_checkpoint
