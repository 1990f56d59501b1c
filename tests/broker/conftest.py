"""Broker fixtures: a Broker on this test's flushed Redis DB, driven from synchronous tests.

pytest-asyncio is not a dependency. Each test gets one ``asyncio.Runner`` (one event loop for the
whole test, so the async Redis client's connections stay on one loop) and calls ``run(coro)``.

After every test the namespace must be consistent: ``check_integrity`` is asserted on teardown.
A test that corrupts the store on purpose requests the ``allow_inconsistency`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.broker.records import NewJob, job_from_body
from runtime.config import Settings
from runtime.envelope import ErrorInfo

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]

TEST_PREFIX = "{ojs-test}:"


def new_job(body: dict[str, Any], *, now_ms: int | None = None) -> NewJob:
    """An enqueue request body, decoded and validated exactly as the HTTP binding does it
    (``build_job`` on the decoded ``EnqueueRequest``, plus the client-id flag)."""
    now = timefmt.now_ms() if now_ms is None else now_ms
    return job_from_body(msgspec.json.encode(body), now_ms=now)


def body(job_type: str = "test.job", **options: Any) -> dict[str, Any]:
    """A minimal job body; keyword arguments go into ``options``."""
    out: dict[str, Any] = {"type": job_type, "args": [1]}
    if options:
        out["options"] = options
    return out


def no_jitter(**policy: Any) -> dict[str, Any]:
    """A retry policy with deterministic delays (the spec's default has jitter on)."""
    return {"jitter": False, **policy}


def read_job(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, str]:
    """The job hash, decoded, read with the synchronous inspection client."""
    raw: dict[bytes, bytes] = client.hgetall(keys.job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def decoded(h: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in h.items()}


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """``run(coro)`` on one event loop that lives as long as the test."""
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture
def keys() -> Keys:
    return Keys(TEST_PREFIX)


@pytest.fixture
def broker(redis_url: str, run: Run[Any]) -> Iterator[Broker]:
    client = Redis.from_url(redis_url)
    broker = Broker(client, Settings(redis_url=redis_url, key_prefix=TEST_PREFIX))
    try:
        yield broker
    finally:
        run(broker.close())
        run(client.aclose())


@pytest.fixture
def admin(broker: Broker) -> Admin:
    return Admin(broker)


@pytest.fixture
def enqueue(broker: Broker, run: Run[Any]) -> Callable[..., list[str]]:
    """``enqueue(body, ..., now_ms=None)``: one enqueue.lua call for all the bodies."""

    def go(*bodies: dict[str, Any], now_ms: int | None = None) -> list[str]:
        now = timefmt.now_ms() if now_ms is None else now_ms
        done = run(broker.enqueue([new_job(b, now_ms=now) for b in bodies], now_ms=now))
        return [d.job_id for d in done]

    return go


@pytest.fixture
def allow_inconsistency() -> None:
    """Opt out of the teardown integrity assertion (for tests that corrupt the store)."""


@pytest.fixture(autouse=True)
def _store_stays_consistent(
    request: pytest.FixtureRequest, broker: Broker, run: Run[list[str]]
) -> Iterator[None]:
    """Depends on ``broker`` so that it is torn down first, while the client is still open."""
    yield
    if "allow_inconsistency" in request.fixturenames:
        return
    problems = run(check_integrity(broker.redis, broker.keys))
    assert problems == [], "store inconsistent after the test:\n" + "\n".join(problems)


@pytest.fixture
def job_in_state(enqueue: Callable[..., list[str]], broker: Broker, run: Run[Any]) -> Callable[[str], str]:
    """``job_in_state(state)``: a job of queue "states" (expiring in an hour, held by worker w1
    when it was claimed) brought into that state through the broker."""

    def make(state: str) -> str:
        claim = state in ("active", "retryable", "completed", "discarded")
        options: dict[str, Any] = {
            "expires_at": "+PT1H",
            "retry": no_jitter(max_attempts=2, initial_interval="PT1H", max_interval="PT1H"),
            # ahead of the "available" job that may wait in the same queue
            "priority": 100 if claim else 0,
        }
        if state == "scheduled":
            options["scheduled_at"] = "+PT30M"
        if state == "pending":
            options["pending"] = True
        (job_id,) = enqueue(body(queue="states", **options))
        if claim:
            (h,) = run(broker.fetch(["states"], worker_id="w1"))
            assert h[b"id"] == job_id.encode()
        if state == "retryable":
            run(broker.nack(job_id, ErrorInfo(message="retry me")))
        if state == "discarded":
            run(broker.nack(job_id, ErrorInfo(message="drop me", code="DISCARD")))
        if state == "completed":
            run(broker.ack(job_id))
        if state == "cancelled":
            run(broker.cancel(job_id))
        assert run(broker.get(job_id))[b"state"] == state.encode()
        return job_id

    return make
