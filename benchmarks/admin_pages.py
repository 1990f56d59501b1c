"""How fast the admin API answers each dashboard page's requests with a big store behind it.

Seeds a private Redis (the embedded one, no persistence) through the broker's own scripts, in
batches: by default 1,000,000 completed jobs (over 4 queues), 100,000 dead letters (3 error
types) and 10,000 waiting jobs; then starts a real ``ojs-server`` on it and times every request
the dashboard's pages make (median and worst of ``--reps`` calls each, over HTTP on loopback),
and each page as the sum of its requests made one after the other::

    python -m benchmarks.admin_pages [--completed 1000000] [--dead 100000] [--reps 5]

Seeding takes a few minutes and about 2 GB of Redis memory. Not part of ``make test``; the
figures go in the closing notes and RESULTS.md, never into a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.records import job_from_body
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis

QUEUES = ("email", "reports", "billing", "default")
ERRORS = ("smtp_down", "timeout", "bad_input")
BATCH = 1_000
ROOT = Path(__file__).resolve().parent.parent


def _body(queue: str, n: int, max_attempts: int) -> bytes:
    return (b'{"type":"%s.job","args":[{"n":%d,"to":"user%d@example.com"}],"options":{"queue":"%s",'
            b'"retry":{"max_attempts":%d,"on_exhaustion":"dead_letter"}}}'
            % (queue.encode(), n, n, queue.encode(), max_attempts))


async def _seed(broker: Broker, *, completed: int, dead: int, waiting: int) -> None:
    started = time.monotonic()
    n = 0

    async def enqueue(count: int, queue: str, max_attempts: int) -> None:
        nonlocal n
        for first in range(0, count, BATCH):
            now = timefmt.now_ms()
            jobs = [job_from_body(_body(queue, n + i, max_attempts), now_ms=now) for i in range(min(BATCH, count - first))]
            n += len(jobs)
            await broker.enqueue(jobs, now_ms=now)

    for i, queue in enumerate(QUEUES):
        await enqueue(completed // len(QUEUES), queue, 3)
        done = 0
        while done < completed // len(QUEUES):
            claimed = await broker.fetch([queue], count=BATCH, worker_id="seed")
            if not claimed:
                break
            await broker.ack_many([Completion(job_id=f[b"id"].decode(), worker_id="seed", claim=f[b"claim"].decode())
                                   for f in claimed])
            done += len(claimed)
        print(f"  {queue}: {done} completed ({time.monotonic() - started:.0f} s)", flush=True)
        if i == 0:
            await enqueue(dead, "email", 1)
            failed = 0
            while failed < dead:
                claimed = await broker.fetch(["email"], count=BATCH, worker_id="seed")
                if not claimed:
                    break
                now = timefmt.now_ms()
                items = [Failure(job_id=f[b"id"].decode(), verdict="retry", worker_id="seed", claim=f[b"claim"].decode(),
                                 error=failures.server_error(ERRORS[(failed + k) % 3], ERRORS[(failed + k) % 3],
                                                             "it went wrong", now))
                         for k, f in enumerate(claimed)]
                await broker.fail_many(items, now_ms=now)
                failed += len(claimed)
            print(f"  email: {failed} dead letters ({time.monotonic() - started:.0f} s)", flush=True)
    await enqueue(waiting, "default", 3)


PAGES: dict[str, list[str]] = {
    "overview": ["/ojs/v1/admin/stats", "/ojs/v1/admin/stats/history?period=1m", "/ojs/v1/admin/queues"],
    "queues": ["/ojs/v1/admin/queues"],
    "jobs (completed, newest)": ["/ojs/v1/admin/jobs?state=completed"],
    "jobs (one queue, completed)": ["/ojs/v1/admin/jobs?queue=reports&state=completed"],
    "jobs (all states)": ["/ojs/v1/admin/jobs"],
    "jobs (waiting)": ["/ojs/v1/admin/jobs?state=available"],
    "jobs (type filter)": ["/ojs/v1/admin/jobs?state=completed&type=billing.*"],
    "jobs (text search)": ["/ojs/v1/admin/jobs?state=completed&q=user77"],
    "jobs (page 50)": ["/ojs/v1/admin/jobs?state=completed&page=50"],
    "job detail": ["@detail"],
    "dead letters": ["/ojs/v1/admin/dead-letter/stats", "/ojs/v1/admin/dead-letter"],
    "dead letters (by error)": ["/ojs/v1/admin/dead-letter?error_type=timeout"],
    "workers and pools": ["/ojs/v1/admin/workers", "/ojs/v1/admin/pools", "/ojs/v1/admin/scheduling/stats"],
    "cron": ["/ojs/v1/crons"],
    "workflows": ["/ojs/v1/workflows"],
    "history (1h over 24 h)": ["/ojs/v1/admin/stats/history?period=1h"],
}


def _time_pages(base: str, reps: int) -> list[tuple[str, float, float]]:
    out = []
    with httpx.Client(base_url=base, timeout=60) as client:
        some_id = client.get("/ojs/v1/admin/jobs?state=completed&per_page=1").json()["items"][0]["id"]
        for page, paths in PAGES.items():
            totals = []
            for _ in range(reps):
                total = 0.0
                for path in paths:
                    url = f"/ojs/v1/admin/jobs/{some_id}" if path == "@detail" else path
                    t0 = time.perf_counter()
                    reply = client.get(url)
                    total += time.perf_counter() - t0
                    assert reply.status_code == 200, (url, reply.status_code, reply.text[:200])
                totals.append(total * 1000)
            out.append((page, statistics.median(totals), max(totals)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completed", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    redis_server = EmbeddedRedis(persistence=False, databases=1)
    redis_server.start()
    try:
        url = redis_server.url_for_db(0)

        async def seed() -> int:
            client = Redis.from_url(url)
            broker = Broker(client, Settings(redis_url=url))
            await _seed(broker, completed=args.completed, dead=args.dead, waiting=args.waiting)
            used = int((await client.info("memory"))["used_memory"])
            await broker.close()
            await client.aclose()
            return used

        print(f"seeding {args.completed} completed, {args.dead} dead letters, {args.waiting} waiting ...", flush=True)
        used = asyncio.run(seed())
        print(f"Redis used_memory: {used / 2**20:.0f} MiB", flush=True)
        port = 18000 + os.getpid() % 1000
        with tempfile.TemporaryFile() as log:
            server = subprocess.Popen([sys.executable, "-m", "runtime", "--port", str(port), "--redis", url,
                                       "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{base}/ojs/v1/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                rows = _time_pages(base, args.reps)
            finally:
                server.terminate()
                server.wait()
        print(f"\n| page | median ms | worst ms |\n|---|--:|--:|")
        for page, median, worst in rows:
            print(f"| {page} | {median:.1f} | {worst:.1f} |")
    finally:
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
