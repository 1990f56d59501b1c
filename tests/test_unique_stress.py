"""Unique jobs under contention: the check and the insert are one script, so no two duplicates."""

from __future__ import annotations

import asyncio

import msgspec
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.records import job_from_body
from runtime.config import Settings
from runtime.errors import Duplicate

CLIENTS = 8
ATTEMPTS_PER_CLIENT = 500
BODY = msgspec.json.encode({
    "type": "report.build",
    "args": [{"day": "2026-11-23"}],
    "options": {"queue": "reports", "unique": {"keys": ["type", "args"], "on_conflict": "reject"}},
})


async def _client(url: str, prefix: str) -> tuple[int, int]:
    """One producer with its own connection: returns (accepted, rejected)."""
    conn = Redis.from_url(url)
    broker = Broker(conn, Settings(redis_url=url, key_prefix=prefix))
    accepted = rejected = 0
    try:
        for _ in range(ATTEMPTS_PER_CLIENT):
            try:
                await broker.enqueue([job_from_body(BODY, now_ms=timefmt.now_ms())], now_ms=timefmt.now_ms())
                accepted += 1
            except Duplicate:
                rejected += 1
    finally:
        await broker.close()
        await conn.aclose()
    return accepted, rejected


def test_unique_reject_holds_under_concurrent_producers(redis_url: str, redis_client: redis.Redis) -> None:
    # Given 8 producers on separate connections, each enqueuing the same unique job 500 times
    prefix = "{stress}:"

    async def run_all() -> list[tuple[int, int]]:
        return await asyncio.gather(*(_client(redis_url, prefix) for _ in range(CLIENTS)))

    # When they all run at once
    outcomes = asyncio.run(run_all())

    # Then exactly one enqueue was accepted, every other one was rejected, and one job exists
    assert sum(a for a, _ in outcomes) == 1
    assert sum(r for _, r in outcomes) == CLIENTS * ATTEMPTS_PER_CLIENT - 1
    job_keys = list(redis_client.scan_iter(match=f"{prefix}job:*", count=1000))
    assert len(job_keys) == 1
    assert redis_client.zcard(f"{prefix}queue:reports:available") == 1
    assert redis_client.hget(f"{prefix}queue:reports:counts", "available") == b"1"
