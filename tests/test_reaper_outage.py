"""Lease expiry after a Redis outage: the reaper gives live pools a chance to renew.

While Redis is away no pool can heartbeat, so every lease that ran out meanwhile says nothing about
its pool. These tests run a Redis of their own (``make_embedded_redis``), stop it for longer than a
lease, start it again on its data, and drive the reaper (``Broker.scheduler_step``) and the workers
(``fetch`` with a short lease, ``heartbeat``) through the broker API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker import BACKEND_ERRORS
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis
from tests.broker.conftest import body, new_job
from tests.fixtures.procs import free_port, wait_until

T = TypeVar("T")

LEASE_MS = 1_000
# Built with convert (unknown names are ignored) so the same test runs against a broker that has
# no outage settings at all: there it must fail on its assertions, not on its setup.
# The grace is generous: three calls right after the restart must land within it, on a busy machine.
OUTAGE_SETTINGS = {"reaper_outage_gap_ms": LEASE_MS // 2, "reaper_outage_grace_ms": 4_000}


class Outage:
    """One persistent Redis that can be stopped and started again on its data and port."""

    def __init__(self, make: Callable[..., EmbeddedRedis], data_dir: Path) -> None:
        self._make, self._data_dir = make, str(data_dir)
        # a port of this worker's own: another worker cannot take it while the server is down
        self.server = make(data_dir=self._data_dir, persistence=True, port=free_port())
        self.url = self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()  # SHUTDOWN: the AOF is complete on disk

    def restart(self) -> None:
        self.server = self._make(data_dir=self._data_dir, persistence=True, port=self.port)
        self.server.start()


@pytest.fixture
def run() -> Iterator[Callable[[Awaitable[Any]], Any]]:
    with asyncio.Runner() as runner:
        yield runner.run


def reaper(url: str) -> Broker:
    """A broker as one server's scheduler loop uses it (each server has its own)."""
    settings = msgspec.convert({"redis_url": url, **OUTAGE_SETTINGS}, Settings)
    return Broker(Redis.from_url(url), settings)


def once_back(run: Callable[[Awaitable[T]], T], call: Callable[[], Awaitable[T]]) -> T:
    """The first call that gets through after a restart (a stale connection may fail once, as it
    does in the scheduler loop, which then simply tries again)."""

    def attempt() -> list[T]:
        try:
            return [run(call())]
        except BACKEND_ERRORS:
            return []

    return wait_until(attempt, what="Redis to answer again")[0]


def job_of(url: str, job_id: str) -> dict[bytes, bytes]:
    """The job hash, read over a connection of its own (the brokers' may be stale after a restart)."""
    with sync_redis.Redis.from_url(url) as client:
        return client.hgetall(Keys().job(job_id))  # type: ignore[no-any-return]


def test_outage_longer_than_a_lease_does_not_reap_live_workers(
    make_embedded_redis: Callable[..., EmbeddedRedis], tmp_path: Path, run: Callable[[Awaitable[Any]], Any],
) -> None:
    # Given: two jobs claimed with a one-second lease, one by a worker that will come back, one by
    # a worker that died; two servers' reapers have been stepping
    redis = Outage(make_embedded_redis, tmp_path / "redis")
    first, second = reaper(redis.url), reaper(redis.url)
    done = run(first.enqueue([new_job(body()), new_job(body())], now_ms=timefmt.now_ms()))
    alive_id, dead_id = (d.job_id for d in done)
    (claimed,) = run(first.fetch(["default"], worker_id="alive", visibility_ms=LEASE_MS))
    assert claimed[b"id"] == alive_id.encode()
    run(first.fetch(["default"], worker_id="dead", visibility_ms=LEASE_MS))
    assert run(first.scheduler_step()) == 0
    assert run(second.scheduler_step()) == 0
    lease_end = max(int(run(first.get(i))[b"visible_until"]) for i in (alive_id, dead_id))

    # When: Redis is away for longer than the lease, and comes back on its data
    redis.stop()
    wait_until(lambda: timefmt.now_ms() > lease_end + LEASE_MS // 2, what="the leases to run out")
    redis.restart()

    # Then: neither server's reaper expires a lease at once, though both have run out
    assert once_back(run, first.scheduler_step) == 0
    assert once_back(run, second.scheduler_step) == 0
    assert job_of(redis.url, alive_id)[b"state"] == b"active"
    assert job_of(redis.url, dead_id)[b"state"] == b"active"
    # the live worker renews its lease within the grace
    beat = once_back(run, lambda: first.heartbeat("alive", [alive_id], visibility_ms=60_000))
    assert beat.extended == [alive_id]
    # and the dead worker's job is reaped once the grace is over; the live one keeps running
    wait_until(lambda: once_back(run, second.scheduler_step), what="the dead worker's job to be reaped")
    alive, dead = job_of(redis.url, alive_id), job_of(redis.url, dead_id)
    assert (alive[b"state"], alive[b"worker_id"], alive[b"attempt"]) == (b"active", b"alive", b"1")
    assert (dead[b"state"], dead[b"attempt"]) == (b"available", b"1")
    assert b"worker_id" not in dead
    for broker in (first, second):
        run(broker.close())
        run(broker.redis.aclose())
