"""Where W3's enqueue-to-start latency goes: ``python -m benchmarks.w3_breakdown [--jobs 300]``.

One idle pool (``ojs-run benchmarks.ojs_handlers --processes 1``), jobs enqueued one at a time,
``--gap-ms`` apart, as W3 does. Redis' ``MONITOR`` stamps every command as Redis receives it
(microseconds, the machine's clock, as the producer's and the handler's stamps), so each job's
latency splits into:

1. producer → Redis: the producer's stamp before ``Client.enqueue`` to the enqueue call's arrival;
2. Redis → the pool's fetch: from the enqueue's arrival (its PUBLISH wakes the idle pool) to the
   arrival of the next fetch call (the notification's delivery, the pool's wake-up and its send);
3. the fetch → the handler: from the fetch's arrival to the handler's first line (the script,
   its reply, the pool building the job and starting its task).

MONITOR costs Redis a little per command, so the total runs a bit above the harness's W3 figure;
the split is what this is for. Medians and p99 of each part are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

import redis

from benchmarks.peerdefs import ojs_run
from benchmarks.suite import percentile, spawn, stop_group
from runtime import Client
from runtime.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def _monitor(url: str, stamps: list[tuple[float, str]], ready: threading.Event, stop: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    with client.monitor() as feed:
        ready.set()
        for event in feed.listen():
            command = event["command"]
            if command.startswith("FCALL ") and "warmup" not in command:  # not the producer's first call
                name = command.split(" ", 2)[1]
                stamps.append((float(event["time"]), name.rsplit("_", 1)[-1]))
            if stop.is_set():
                return


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {percentile(ordered, 0.5) * 1000:6.3f} ms  p99 {percentile(ordered, 0.99) * 1000:6.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", "-n", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    opts = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ojs-w3-breakdown-"))
    with EmbeddedRedis(persistence=False) as server:
        env = {**os.environ, "BENCH_REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        run = ojs_run()
        with open(log_dir / "ojs-run.log", "a") as log:
            pool = spawn([run, "benchmarks.ojs_handlers", "--queues", "bench", "--processes", "1", "--concurrency",
                          "10", "--no-http", "--redis", server.url], env=env, cwd=ROOT, log=log)
        stamps: list[tuple[float, str]] = []
        ready, stop = threading.Event(), threading.Event()
        starts = redis.Redis.from_url(server.url)
        try:
            deadline = time.monotonic() + 60
            while b"worker" not in b"".join(starts.keys("{ojs}:worker:*")) and time.monotonic() < deadline:
                time.sleep(0.05)  # the pool registers itself when it is up: nothing to wait on before
            threading.Thread(target=_monitor, args=(server.url, stamps, ready, stop), daemon=True).start()
            ready.wait(10)
            sent = asyncio.run(_produce(server.url, opts.jobs, opts.gap_ms))
            deadline = time.monotonic() + 30
            while starts.llen("bench:lat") < opts.jobs and time.monotonic() < deadline:
                time.sleep(0.01)
            started = [int(v) / 1e9 for v in starts.lrange("bench:lat", 0, -1)]
        finally:
            stop.set()
            starts.ping()  # one more command, so the monitor sees `stop`
            stop_group(pool)
    enqueues = [t for t, name in stamps if name == "enqueue"]
    fetches = [t for t, name in stamps if name == "fetch"]
    parts: dict[str, list[float]] = {"producer → Redis": [], "Redis → the pool's fetch": [],
                                     "the fetch → the handler": [], "total": []}
    for t0, arrived, handler in zip(sent, enqueues, started, strict=False):
        fetch = next((f for f in fetches if f >= arrived), None)
        if fetch is None or handler < fetch:
            continue  # a fetch already on its way took it: not the idle path this measures
        parts["producer → Redis"].append(arrived - t0)
        parts["Redis → the pool's fetch"].append(fetch - arrived)
        parts["the fetch → the handler"].append(handler - fetch)
        parts["total"].append(handler - t0)
    print(f"{len(parts['total'])} of {opts.jobs} jobs on the idle path")
    for name, values in parts.items():
        if values:
            print(f"  {name:28} {_percentiles(values)}")
    return 0


async def _produce(url: str, jobs: int, gap_ms: float) -> list[float]:
    sent: list[float] = []
    async with Client(url) as client:
        await client.enqueue("bench.noop", [], queue="warmup")  # connections open, scripts loaded
        for _ in range(jobs):
            sent.append(time.time())
            await client.enqueue("bench.lat", [], queue="bench")
            await asyncio.sleep(gap_ms / 1000)
    return sent


if __name__ == "__main__":
    raise SystemExit(main())
