"""How fast the dashboard's pages answer with a big Redis: by default 1,000,000 completed jobs
and 100,000 dead letters (plus some waiting jobs), seeded straight through the broker in batches.

A page "answers" when every admin API request it makes on load has been answered; the requests
of one page go out together, as the browser sends them. Each page is timed `--reps` times; the
report gives the median and the worst. Not a test: run it by hand, on a quiet machine.

    python -m benchmarks.dashboard_pages                      # its own Redis and server
    python -m benchmarks.dashboard_pages --completed 100000 --dead 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence

import httpx
import msgspec

from benchmarks.http_throughput import ServerUnderTest
from runtime import timefmt
from runtime.broker.clients import redis_client
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.failures import error_record
from runtime.broker.records import job_from_body
from runtime.config import Settings
from runtime.envelope import ErrorInfo

BATCH = 1000
QUEUES = ("email", "reports", "billing", "media")
ERROR_TYPES = ("PaymentDeclined", "TimeoutError", "ConnectionReset", "ValidationError")


def page_requests(job_id: str, *, pools: bool) -> dict[str, list[str]]:
    """The admin API requests each page sends when it opens (see runtime/dashboard/static/js);
    the workers page asks for the pools only from a server whose manifest lists fair-scheduling."""
    now = time.time()
    until = timefmt.format_ms(int(now * 1000))

    def overview(period: str, span_s: int) -> list[str]:
        since = timefmt.format_ms(int((now - span_s) * 1000))
        return ["/ojs/v1/admin/stats", f"/ojs/v1/admin/stats/history?period={period}&since={since}&until={until}",
                "/ojs/v1/admin/queues?per_page=100", "/ojs/v1/admin/dead-letter/stats"]

    return {
        "overview": overview("1m", 3600),
        "overview (24 hours)": overview("1h", 86400),
        "overview (30 days)": overview("1d", 30 * 86400),
        "queues": ["/ojs/v1/admin/queues?per_page=100"],
        "jobs": ["/ojs/v1/admin/jobs?per_page=50&order=desc", "/ojs/v1/admin/queues?per_page=100"],
        "jobs (completed in email)": ["/ojs/v1/admin/jobs?queue=email&state=completed&per_page=50&order=desc"],
        "jobs (args search)": ["/ojs/v1/admin/jobs?q=needle-424242&per_page=50&order=desc"],
        "job": [f"/ojs/v1/admin/jobs/{job_id}"],
        "dead letters": ["/ojs/v1/admin/dead-letter/stats", "/ojs/v1/admin/dead-letter?per_page=50"],
        "dead letters (one error type)": ["/ojs/v1/admin/dead-letter?error_type=TimeoutError&per_page=50"],
        "workers": ["/ojs/v1/admin/workers?per_page=100",
                    *(["/ojs/v1/admin/pools", "/ojs/v1/admin/scheduling/stats"] if pools else [])],
        "cron": ["/ojs/v1/cron"],
        "workflows": ["/ojs/v1/workflows?per_page=50"],
    }


def _body(queue: str, n: int, dead: bool) -> bytes:
    job: dict[str, object] = {"type": f"{queue}.work", "args": [{"n": n, "ref": f"needle-{n}"}], "options": {"queue": queue}}
    if dead:
        job["options"] = {"queue": queue, "retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}}
    return msgspec.json.encode(job)


async def seed(redis_url: str, *, completed: int, dead: int, waiting: int, quiet: bool) -> str:
    """Enqueue, claim and settle in batches of BATCH: one enqueue, fetch and ack/nack call each."""
    settings = Settings()
    broker = Broker(redis_client(settings, redis_url), settings)
    last = ""
    started = time.monotonic()
    try:
        for kind, total in (("completed", completed), ("dead", dead), ("waiting", waiting)):
            for start in range(0, total, BATCH):
                now = timefmt.now_ms()
                queue = QUEUES[(start // BATCH) % len(QUEUES)]
                size = min(BATCH, total - start)
                jobs = [job_from_body(_body(queue, start + i, kind == "dead"), now_ms=now) for i in range(size)]
                await broker.enqueue(jobs, now_ms=now)
                last = jobs[-1].id
                if kind == "waiting":
                    continue
                claimed = await broker.fetch([queue], count=size, worker_id="bench-seed")
                if kind == "completed":
                    await broker.ack_many([Completion(job_id=h[b"id"].decode(), result=b'{"ok":true}',
                                                      worker_id="bench-seed") for h in claimed])
                else:
                    await broker.fail_many([Failure(
                        job_id=h[b"id"].decode(), verdict="dead_letter", worker_id="bench-seed",
                        error=error_record(ErrorInfo(type=ERROR_TYPES[i % len(ERROR_TYPES)], message="seeded failure"), now),
                    ) for i, h in enumerate(claimed)], now_ms=now)
                if not quiet and (start // BATCH) % 50 == 0:
                    print(f"  {kind}: {start + size:,}/{total:,} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        await broker.close()
    return last


async def _timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    began = time.perf_counter()
    reply = await client.get(path)
    return reply, (time.perf_counter() - began) * 1000


async def time_pages(url: str, job_id: str, reps: int, api_key: str | None,
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per page, the time until all its requests were answered; per request, its own time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timings: dict[str, list[float]] = {}
    per_request: dict[str, list[float]] = {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        manifest = (await client.get("/ojs/manifest")).json()
        pools = "fair-scheduling" in json.dumps(manifest.get("extensions", {}))
        for name, paths in page_requests(job_id, pools=pools).items():
            for path in paths:  # once unmeasured: scripts loaded, connections open
                (await client.get(path)).raise_for_status()
            for _ in range(reps):
                began = time.perf_counter()
                replies = await asyncio.gather(*(_timed_get(client, path) for path in paths))
                timings.setdefault(name, []).append((time.perf_counter() - began) * 1000)
                for path, (reply, ms) in zip(paths, replies, strict=True):
                    reply.raise_for_status()
                    # The history's since/until change with the clock: named by its period alone.
                    per_request.setdefault(path.split("&since=")[0], []).append(ms)
    return timings, per_request


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completed", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--budget-ms", type=float, default=300.0, help="the figure each page should stay under")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    server = ServerUnderTest("")
    server.start()
    try:
        began = time.monotonic()
        job_id = asyncio.run(seed(server.redis_url, completed=args.completed, dead=args.dead,
                                  waiting=args.waiting, quiet=args.quiet))
        print(f"seeded {args.completed:,} completed, {args.dead:,} dead letters, {args.waiting:,} waiting "
              f"in {time.monotonic() - began:.0f} s")
        timings, per_request = asyncio.run(time_pages(server.url, job_id, args.reps, None))
    finally:
        server.stop()
    print(f"\n{'page':32} {'median ms':>10} {'worst ms':>10}")
    over = 0
    for name, values in timings.items():
        worst = max(values)
        over += worst > args.budget_ms
        mark = "  over budget" if worst > args.budget_ms else ""
        print(f"{name:32} {statistics.median(values):10.1f} {worst:10.1f}{mark}")
    print(f"\n{'request':72} {'median ms':>10}")
    for path, values in sorted(per_request.items(), key=lambda item: -statistics.median(item[1])):
        print(f"{path[:72]:72} {statistics.median(values):10.1f}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
