"""The ojs side of the peer comparison: ``ojs-run benchmarks.ojs_handlers --queues bench ...``.

Each handler does one Redis command, like the peers' handlers (benchmarks/peers/_common.py):
``bench.noop`` INCRs ``bench:done`` (the harness polls that counter to see the drain finish),
``bench.lat`` RPUSHes ``time.time_ns()``, taken first thing, onto ``bench:lat`` (the producer
BLPOPs it and subtracts its own enqueue stamp). The Redis URL is ``BENCH_REDIS_URL``; the client
is made lazily, so each pool process (forked) gets its own.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis.asyncio import Redis

from runtime import JobContext, handler

COUNTER = "bench:done"
LATENCY = "bench:lat"

_redis: Redis | None = None
_redis_pid = 0


def _client() -> Redis:
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        _redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _redis_pid = os.getpid()
    return _redis


@handler("bench.noop", queue="bench")
async def noop(ctx: JobContext, *args: Any) -> None:
    await _client().execute_command("INCR", COUNTER)  # redis-py's incr() sends INCRBY


@handler("bench.lat", queue="bench")
async def lat(ctx: JobContext, *args: Any) -> None:
    started = time.time_ns()
    await _client().rpush(LATENCY, started)
