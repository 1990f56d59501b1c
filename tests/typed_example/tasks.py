"""A typed handlers module and correct uses of its task handles: `mypy --strict` accepts all of
it (tests/test_typed_handles.py runs it, and wrong uses next to it)."""

from __future__ import annotations

from runtime import JobContext, JobHandle, SyncJobHandle, handler


@handler("typed.email", queue="email")
async def send_email(ctx: JobContext, to: str, subject: str = "hello") -> dict[str, str]:
    return {"to": to, "subject": subject}


@handler("typed.add")
def add(ctx: JobContext, a: int, b: int) -> int:
    return a + b


async def produce() -> str:
    job: JobHandle[dict[str, str]] = await send_email.enqueue("a@example.com", "Welcome")
    await send_email.enqueue(to="a@example.com")
    await send_email.options(queue="urgent", priority=5, delay=60).enqueue("b@example.com")
    sent: dict[str, str] = await job.result(timeout=10)
    state: str = await job.status()
    total: int = await (await add.enqueue(1, 2)).result()
    return f"{sent['to']} {state} {total}"


def produce_sync() -> int:
    job: SyncJobHandle[int] = add.enqueue_sync(2, 3)
    send_email.enqueue_sync("c@example.com")
    return job.result(timeout=10)


async def call_directly(ctx: JobContext) -> int:
    """The handle is still the function."""
    sent: dict[str, str] = await send_email(ctx, "d@example.com")
    return add(ctx, 1, len(sent))
