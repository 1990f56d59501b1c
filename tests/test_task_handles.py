"""`@handler` returns a typed task handle: still callable as the function, and able to enqueue
its own jobs (async and sync) and to wait for their results. A real Redis; jobs are run by
claiming and settling them through the broker, as a pool does."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import runtime
from runtime import Client
from runtime.broker.core import Broker
from runtime.config import settings_from_env
from runtime.envelope import ErrorInfo
from runtime.handlers import registered
from runtime.job_handle import JobFailed, JobHandle
from tests.fixtures import task_handlers
from tests.fixtures.procs import Runtime
from tests.fixtures.task_handlers import add, flagged, greet, send_email


@contextlib.asynccontextmanager
async def connected(redis_url: str) -> AsyncIterator[tuple[Client, Broker]]:
    """A client the handles use, and a broker to play the pool's part."""
    redis = Redis.from_url(redis_url)
    broker = Broker(redis, settings_from_env(redis_url=redis_url))
    try:
        async with Client(redis_url) as client:
            with runtime.using_client(client):
                yield client, broker
    finally:
        await broker.close()
        await redis.aclose()


def scenario(redis_url: str, body: Callable[[Client, Broker], Awaitable[None]]) -> None:
    async def go() -> None:
        async with connected(redis_url) as (client, broker):
            await body(client, broker)

    asyncio.run(go())


async def run_one(broker: Broker, queue: str, result: bytes = b"") -> str:
    """Claim the next job of `queue` and complete it with `result` (JSON text)."""
    (claimed,) = await broker.fetch([queue], worker_id="w1")
    job_id = claimed[b"id"].decode()
    await broker.ack(job_id, result, worker_id="w1", attempt=int(claimed[b"attempt"]))
    return job_id


# --- the handle is still the function ---------------------------------------------------------------


def test_the_handle_is_callable_as_the_function_and_keeps_its_identity() -> None:
    assert send_email.__name__ == "send_email"
    assert send_email.__doc__ == "Send one email."
    assert list(inspect.signature(send_email).parameters) == ["ctx", "to", "subject"]
    assert registered("handle.email").fn is task_handlers.send_email.fn  # the raw function
    assert inspect.iscoroutinefunction(registered("handle.email").fn)
    assert add(None, 2, 3) == 5  # type: ignore[arg-type]
    assert asyncio.run(send_email(None, "a@x", "hi")) == {"to": "a@x", "subject": "hi"}  # type: ignore[arg-type]
    assert send_email.job_type == "handle.email"


# --- enqueue -----------------------------------------------------------------------------------------


def test_enqueue_inserts_a_job_with_the_handlers_defaults(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await send_email.enqueue("a@example.com", "Welcome")
        assert isinstance(job, JobHandle)
        envelope = await client.get(job.id)
        assert envelope["type"] == "handle.email"
        assert envelope["args"] == ["a@example.com", "Welcome"]
        assert envelope["queue"] == "mail"
        assert await job.status() == "available"

    scenario(redis_url, body)


def test_keyword_arguments_become_positional_args_with_defaults_filled(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await send_email.enqueue(subject="S", to="b@example.com")
        assert (await client.get(job.id))["args"] == ["b@example.com", "S"]
        job = await greet.enqueue("ada", punct="?")
        assert (await client.get(job.id))["args"] == ["ada", "hello", "?"]

    scenario(redis_url, body)


def test_options_set_queue_priority_delay_and_uniqueness(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        urgent = send_email.options(queue="urgent", priority=7, delay=timedelta(hours=1),
                                    unique={"keys": ["type", "args"], "on_conflict": "ignore"})
        first = await urgent.enqueue("c@example.com", "x")
        again = await urgent.enqueue("c@example.com", "x")
        envelope = await client.get(first.id)
        assert envelope["queue"] == "urgent"
        assert envelope["priority"] == 7
        assert envelope["state"] == "scheduled"
        assert again.id == first.id  # the unique policy returned the existing job

    scenario(redis_url, body)


def test_arguments_that_do_not_bind_are_refused_before_anything_is_inserted(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        with pytest.raises(TypeError):
            await send_email.enqueue()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            await add.enqueue(1, 2, 3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="keyword-only"):
            await flagged.enqueue("ada", loud=True)  # args are positional: `loud` cannot travel
        assert await broker.redis.keys(broker.keys.job("*")) == []

    scenario(redis_url, body)


def test_enqueue_sync_uses_the_configured_client(redis_url: str) -> None:
    runtime.configure(redis_url=redis_url)
    try:
        job = add.enqueue_sync(2, 3)
        assert job.status() == "available"
        envelope = asyncio.run(_get(redis_url, job.id))
        assert envelope["args"] == [2, 3]
    finally:
        runtime.configure()


async def _get(redis_url: str, job_id: str) -> dict[str, Any]:
    async with Client(redis_url) as client:
        return await client.get(job_id)


# --- results -----------------------------------------------------------------------------------------


def test_result_waits_for_the_job_to_complete(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await add.enqueue(2, 3)
        waiting = asyncio.create_task(job.result(timeout=10))
        await asyncio.sleep(0)  # let it subscribe; it must not matter when the job ends
        await run_one(broker, "default", b"5")
        assert await waiting == 5
        assert await job.status() == "completed"

    scenario(redis_url, body)


def test_a_result_waits_quietly_under_a_short_command_deadline(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The event-stream read blocks within the client's command deadline: a deadline shorter than
    the read's usual block must not make every read time out (and warn) while a job runs."""
    monkeypatch.setenv("OJS_REDIS_COMMAND_TIMEOUT_MS", "300")

    async def body(client: Client, broker: Broker) -> None:
        job = await add.enqueue(2, 3)
        with pytest.raises(TimeoutError):
            await job.result(timeout=1.0)  # the wait outlives several blocks: none may fail
        waiting = asyncio.create_task(job.result(timeout=10))
        await asyncio.sleep(0)
        await run_one(broker, "default", b"5")
        assert await waiting == 5

    scenario(redis_url, body)
    assert "cannot read the event stream" not in caplog.text


def test_result_of_a_job_that_completed_before_the_wait(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await send_email.enqueue("d@example.com")
        await run_one(broker, "mail", b'{"to": "d@example.com"}')
        assert await job.result(timeout=10) == {"to": "d@example.com"}

    scenario(redis_url, body)


def test_many_waiters_share_the_notifications(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        jobs = [await add.enqueue(i, i) for i in range(20)]
        waiting = [asyncio.create_task(job.result(timeout=10)) for job in jobs]
        await asyncio.sleep(0)
        for i in range(20):
            await run_one(broker, "default", str(2 * i).encode())
        assert await asyncio.gather(*waiting) == [2 * i for i in range(20)]

    scenario(redis_url, body)


def test_a_wait_reads_the_job_once_after_subscribing_and_once_at_its_own_event(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        others = [await add.enqueue(i, i) for i in range(20)]  # they run first (FIFO)
        target = await add.enqueue(1, 1)
        reads: list[str] = []
        read = client.get

        async def counted(job_id: str) -> dict[str, Any]:
            reads.append(job_id)
            return await read(job_id)

        client.get = counted  # type: ignore[method-assign]
        waiting = asyncio.create_task(target.result(timeout=10))
        while not reads:  # subscribed, and read once: the job is not done
            await asyncio.sleep(0)
        for _ in others:  # their events wake the reader, not this waiter
            await run_one(broker, "default", b"0")
        await run_one(broker, "default", b"2")
        assert await waiting == 2
        assert reads == [target.id, target.id]

    scenario(redis_url, body)


def test_a_job_that_ends_right_after_the_waits_state_read_is_not_missed(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await add.enqueue(3, 4)
        read = client.get
        first = True

        async def read_then_complete(job_id: str) -> dict[str, Any]:
            nonlocal first
            envelope = await read(job_id)
            if first:  # the job ends between this read and the wait that follows it
                first = False
                await run_one(broker, "default", b"7")
            return envelope

        client.get = read_then_complete  # type: ignore[method-assign]
        assert await job.result(timeout=10) == 7

    scenario(redis_url, body)


def test_a_discarded_job_raises_its_error(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await add.options(retry={"max_attempts": 1}).enqueue(1, 1)
        waiting = asyncio.create_task(job.result(timeout=10))
        (claimed,) = await broker.fetch(["default"], worker_id="w1")
        await broker.nack(job.id, ErrorInfo(type="boom", message="it broke"), worker_id="w1",
                          attempt=int(claimed[b"attempt"]))
        with pytest.raises(JobFailed) as failed:
            await waiting
        assert failed.value.job_id == job.id
        assert failed.value.state == "discarded"
        assert failed.value.error is not None and failed.value.error["message"] == "it broke"
        assert "it broke" in str(failed.value)

    scenario(redis_url, body)


def test_a_cancelled_job_raises(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await add.enqueue(1, 1)
        waiting = asyncio.create_task(job.result(timeout=10))
        await asyncio.sleep(0)
        await client.cancel(job.id)
        with pytest.raises(JobFailed) as failed:
            await waiting
        assert failed.value.state == "cancelled"

    scenario(redis_url, body)


def test_result_times_out(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job = await add.enqueue(1, 1)
        with pytest.raises(TimeoutError):
            await job.result(timeout=0.2)

    scenario(redis_url, body)


def test_the_same_through_the_client(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        job_id = await client.enqueue("handle.add", [4, 5])  # still the id, as before
        assert isinstance(job_id, str)
        handle = await client.enqueue_job("handle.add", [6, 7], priority=3)
        await run_one(broker, "default", b"13")  # higher priority first
        assert await handle.result(timeout=10) == 13
        await run_one(broker, "default", b"9")
        assert await client.job(job_id).result(timeout=10) == 9

    scenario(redis_url, body)


def test_a_handler_enqueues_through_the_current_client(redis_url: str) -> None:
    async def body(client: Client, broker: Broker) -> None:
        seen: list[Any] = []

        class Recording:
            async def enqueue_job(self, type: str, args: list[Any], **options: Any) -> JobHandle[Any]:
                seen.append((type, args, options))
                return await client.enqueue_job(type, args, **options)

        with runtime.using_client(Recording()):  # e.g. a testing kit's fake client
            await send_email.options(priority=2).enqueue("e@example.com")
        assert seen == [("handle.email", ["e@example.com"], {"priority": 2})]

    scenario(redis_url, body)


def test_the_sync_variant_uses_the_client_of_the_callers_context() -> None:
    seen: list[Any] = []

    class FakeHandle:
        id = "fake-1"

        async def status(self) -> str:
            return "completed"

    class Fake:  # no Redis at all: what a testing kit's fake mode would be
        async def enqueue_job(self, type: str, args: list[Any], **options: Any) -> FakeHandle:
            seen.append((type, args, options))
            return FakeHandle()

    with runtime.using_client(Fake()):
        job = add.options(queue="sums").enqueue_sync(1, 2)
    assert seen == [("handle.add", [1, 2], {"queue": "sums"})]
    assert (job.id, job.status()) == ("fake-1", "completed")


@pytest.fixture(autouse=True)
def _fresh_defaults() -> Iterator[None]:
    yield
    runtime.configure()




@pytest.mark.slow
def test_a_handler_enqueues_through_a_handle_into_the_runtimes_redis(redis_url: str, tmp_path: Path) -> None:
    # Given a runtime told its Redis on the command line, while the environment names another
    runtime = Runtime(redis_url, "tests.fixtures.task_handlers", "--processes", "1", "--no-http",
                      log_path=tmp_path / "ojs-run.log", extra_env={"OJS_REDIS_URL": "redis://127.0.0.1:1/0"})
    try:
        runtime.wait_ready(1)

        async def go() -> int:
            async with Client(redis_url) as client:
                parent = await client.enqueue_job("handle.fanout", [21])
                child_id = await parent.result(timeout=30)
                return int(await client.job(child_id).result(timeout=30))

        # When a handler enqueues another job through a handle, Then it lands there and runs
        assert asyncio.run(go()) == 42
    finally:
        runtime.stop()
        print(runtime.log())


def test_a_result_wait_ends_when_cancelled_as_its_wake_up_comes(redis_url: str) -> None:
    # A wake-up that lands in the same loop iteration as the cancellation (an event for the job as
    # its caller gives up): on Python 3.11 asyncio.wait_for returns then instead of raising, and the
    # wait's loop read the job again and went back to waiting, the cancel lost.
    async def main() -> bool:
        async with Client(redis_url) as client:
            handle = await client.enqueue_job("tasks.nobody_runs_this", [])
            waiting = asyncio.get_running_loop().create_task(handle.result(timeout=60))
            deadline = asyncio.get_running_loop().time() + 10
            watch = client._watches.get(0)  # noqa: SLF001  # the stream reader of the one shard
            while not (watch and watch._waiters.get(handle.id)):  # noqa: SLF001
                assert asyncio.get_running_loop().time() < deadline, "the wait never registered"
                await asyncio.sleep(0.01)
                watch = client._watches.get(0)  # noqa: SLF001
            for woken in watch._waiters[handle.id]:  # noqa: SLF001
                woken.set_result(None)
            waiting.cancel()
            done, _ = await asyncio.wait([waiting], timeout=10)
            if not done:
                waiting.cancel()
            return bool(done) and waiting.cancelled()

    assert asyncio.run(main()), "the result wait went on after it was cancelled"
