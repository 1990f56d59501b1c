"""The ojs side of the peer comparison: ``ojs-run benchmarks.ojs_handlers --queues bench ...``.

Each handler does one Redis command, like the peers' handlers (benchmarks/peers/_common.py):
``bench.noop`` INCRs ``bench:done`` (the harness polls that counter to see the drain finish),
``bench.lat`` RPUSHes ``time.time_ns()``, taken first thing, onto ``bench:lat`` (the producer
BLPOPs it and subtracts its own enqueue stamp). The Redis URL is ``BENCH_REDIS_URL``. The client
is the runtime's public ``RedisConnection``, as each peer's handler uses its own ecosystem's
client (BullMQ's ioredis, the Python peers' redis-py); it connects on first use, so each forked
pool process gets its own socket.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runtime import JobContext, RedisConnection, handler

COUNTER = "bench:done"
LATENCY = "bench:lat"

_redis = RedisConnection.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@handler("bench.noop", queue="bench")
async def noop(ctx: JobContext, *args: Any) -> None:
    await _redis.execute("INCR", COUNTER)


@handler("bench.lat", queue="bench")
async def lat(ctx: JobContext, *args: Any) -> None:
    started = time.time_ns()
    await _redis.execute("RPUSH", LATENCY, started)
