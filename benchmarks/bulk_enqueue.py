"""Bulk enqueue throughput through the Python broker API (no HTTP), in batches of 1,000.

    python -m benchmarks.bulk_enqueue [--redis URL] [--batches 20] [--batch-size 1000] [--no-events]

Without --redis a private Redis (no persistence) is started. Prints jobs/s and the time of one
batch (p50/p99); every batch is one enqueue.lua call, one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import msgspec
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.records import job_from_body
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis


async def run(url: str, batches: int, size: int, events: bool) -> None:
    conn = Redis.from_url(url)
    broker = Broker(conn, Settings(redis_url=url, key_prefix="{bench}:", events_maxlen=10_000 if events else 0))
    await conn.flushdb()
    bodies = [msgspec.json.encode({"type": "bench.noop", "args": [i], "options": {"queue": "bulk"}}) for i in range(size)]
    durations = []
    build_s = 0.0
    started = time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        now = timefmt.now_ms()
        jobs = [job_from_body(body, now_ms=now) for body in bodies]
        t1 = time.perf_counter()
        await broker.enqueue(jobs, now_ms=now)
        durations.append(time.perf_counter() - t1)
        build_s += t1 - t0
    total_s = time.perf_counter() - started
    n = batches * size
    print(f"bulk enqueue (Python API): {n} jobs in {total_s:.2f}s = {n / total_s:,.0f} jobs/s")
    print(f"  validation+build: {build_s / n * 1e6:.1f} us/job; enqueue.lua per batch of {size}: "
          f"p50 {statistics.median(durations) * 1000:.1f} ms, max {max(durations) * 1000:.1f} ms")
    await conn.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--no-events", action="store_true", help="disable the event stream")
    args = parser.parse_args()
    server = None
    url = args.redis
    if url is None:
        server = EmbeddedRedis(persistence=False)
        url = server.start()
    try:
        asyncio.run(run(url, args.batches, args.batch_size, not args.no_events))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
