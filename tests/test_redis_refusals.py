"""Redis refusing a command for a while (out of memory under ``noeviction``): the command did not
run, so it counts as not sent. A pool's ack is sent again until Redis takes it (it does not wait
for the lease to lapse and the job to run again), and an HTTP enqueue gets a retryable 503, never
a 500. On a Redis of the test's own: the memory limit is server-wide."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.core import Broker, Completion
from runtime.broker.pool_ops import Batcher
from runtime.broker.wire import Refused
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis
from tests.broker.conftest import body, new_job
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import wait_until


@pytest.fixture
def own_redis(make_embedded_redis: Callable[..., EmbeddedRedis]) -> EmbeddedRedis:
    server = make_embedded_redis(persistence=False)
    server.start()
    return server


class OutOfMemory:
    """maxmemory 1 with noeviction while on: every write is refused with -OOM."""

    def __init__(self, url: str) -> None:
        self.admin = redis.Redis.from_url(url)

    def __enter__(self) -> OutOfMemory:
        self.admin.config_set("maxmemory-policy", "noeviction")
        self.admin.config_set("maxmemory", "1")
        return self

    def lift(self) -> None:
        self.admin.config_set("maxmemory", "0")

    def __exit__(self, *_: object) -> None:
        self.lift()
        self.admin.close()


def test_an_ack_refused_while_redis_is_out_of_memory_is_sent_again_and_lands(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runtime.broker.pool_ops")

    async def go() -> tuple[Any, bytes | None]:
        client = Redis.from_url(own_redis.url)
        broker = Broker(client, Settings(redis_url=own_redis.url))
        try:
            now = timefmt.now_ms()
            (done,) = await broker.enqueue([new_job(body(), now_ms=now)], now_ms=now)
            (claimed,) = await broker.fetch(["default"], worker_id="w1")
            batcher = Batcher(broker, settle_for_s=30)
            with OutOfMemory(own_redis.url) as oom:
                outcome = batcher.ack(Completion(job_id=done.job_id, worker_id="w1",
                                                 claim=claimed[b"claim"].decode()))
                # When: the ack is refused (it did not run) ...
                await asyncio.to_thread(wait_until, lambda: "settling 1 job(s) failed" in caplog.text,
                                        timeout_s=10, what="the refused ack")
                assert "Redis refused the command" in caplog.text
                assert not outcome.done()
                oom.lift()  # ... and Redis takes writes again
                result = await asyncio.wait_for(outcome, 10)
            await batcher.close()
            return result, await client.hget(broker.keys.job(done.job_id), "state")
        finally:
            await broker.close()
            await client.aclose()

    result, state = asyncio.run(go())
    # Then: it landed, the job completed: no lapsed lease, no second run
    assert not isinstance(result, Exception), result
    assert state == b"completed"
    assert "settled 1 job(s) at try" in caplog.text


def test_a_refusal_is_a_command_not_run(own_redis: EmbeddedRedis) -> None:
    async def go() -> BaseException | None:
        client = Redis.from_url(own_redis.url)
        broker = Broker(client, Settings(redis_url=own_redis.url))
        try:
            with OutOfMemory(own_redis.url):
                try:
                    now = timefmt.now_ms()
                    await broker.enqueue([new_job(body(), now_ms=now)], now_ms=now)
                except Exception as err:
                    return err
            return None
        finally:
            await broker.close()
            await client.aclose()

    err = asyncio.run(go())
    assert isinstance(err, Refused), err
    assert redis.Redis.from_url(own_redis.url).dbsize() == 0  # nothing was written


def test_an_http_enqueue_redis_refuses_gets_a_retryable_503(own_redis: EmbeddedRedis, tmp_path: Any) -> None:
    server = BrokerProcess(own_redis.url, tmp_path)
    try:
        server.wait_ready()
        with OutOfMemory(own_redis.url):
            reply = httpx.post(f"{server.url}/ojs/v1/jobs", json={"type": "email.send", "args": []}, timeout=10)
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["retryable"] is True
    finally:
        server.stop()
