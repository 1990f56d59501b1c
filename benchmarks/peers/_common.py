"""The producer side of every Python peer script: one protocol, the peer supplies an adapter.

Runs under the peer's own venv python (stdlib and redis-py only; the project is not importable
there). The harness (benchmarks/suite.py) starts ``python <peer>_bench.py MODE ...`` and talks to
it over stdin/stdout:

* ``enqueue --kind single|bulk``: set up, warm up (a few jobs through the same call), print
  ``READY``; on ``GO`` enqueue ``--jobs`` no-op jobs (one call per job, or ``--batch`` per call)
  and print one JSON line ``{"jobs": n, "seconds": s}``; then wait for ``BYE`` (so the harness can
  read this process's CPU time before it exits).
* ``prefill``: enqueue ``--jobs`` no-op jobs as fast as the peer's API allows (bulk if it has
  one), print the JSON line, exit. Not measured: it sets up the drain (W2).
* With ``--budget-s`` each loop also stops when that time is up: ``jobs`` is then what was done
  (and ``budget_hit`` is true), so a slow system costs seconds, not minutes.
* ``latency``: warm up (``--warmup`` jobs, waiting for each to start: this also waits for the
  worker to come up), ``READY``; on ``GO``, ``--jobs`` times: sleep ``--gap-ms`` (the worker is
  idle again), take ``time.time_ns()``, enqueue one ``lat`` job, wait (BLPOP) for the handler's
  start stamp; print ``{"latencies_ns": [...], "lost": k}``; wait for ``BYE``. With
  ``--budget-s`` it stops early when that time is up (a peer that polls every 0.5 s would take
  minutes for 500 jobs); the figures then come from fewer jobs, and the count says so.

Handlers on the worker side do one Redis command each, like the ojs ones
(benchmarks/ojs_handlers.py): ``noop`` INCRs ``bench:done``; ``lat`` RPUSHes ``time.time_ns()``
taken first thing onto ``bench:lat``.

An adapter is an object with ``open()``, ``enqueue(kind, i)``, ``enqueue_bulk(kind, items)`` (or
the attribute ``enqueue_bulk = None`` when the peer has no batch API) and ``close()``; with
``is_async = True`` the four are coroutines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import redis

QUEUE = "bench"
COUNTER = "bench:done"
LATENCY = "bench:lat"

_client = None
_client_pid = 0


def client() -> redis.Redis:
    """This process's Redis client for the handlers (made lazily: after any fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client


def handle_noop() -> None:
    client().execute_command("INCR", COUNTER)  # redis-py's incr() sends INCRBY


def handle_lat() -> None:
    started = time.time_ns()
    client().rpush(LATENCY, started)


_aclient = None
_aclient_key = None


def aclient():
    """An asyncio Redis client of this process and event loop (for async handlers)."""
    import redis.asyncio as aredis

    global _aclient, _aclient_key
    key = (os.getpid(), id(asyncio.get_running_loop()))
    if _aclient is None or _aclient_key != key:
        _aclient = aredis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _aclient_key = key
    return _aclient


async def ahandle_noop() -> None:
    await aclient().execute_command("INCR", COUNTER)


async def ahandle_lat() -> None:
    started = time.time_ns()
    await aclient().rpush(LATENCY, started)


# --- the producer protocol ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["enqueue", "prefill", "latency"])
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--kind", default="single", choices=["single", "bulk"])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="latency: longest wait for one job")
    parser.add_argument("--start-timeout", type=float, default=60.0, help="latency: wait for the first job")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="stop the timed loop after this long even if not all jobs are done (0: never)")
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error("--redis or BENCH_REDIS_URL is needed")
    os.environ["BENCH_REDIS_URL"] = args.redis
    return args


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def expect(word: str) -> None:
    line = sys.stdin.readline()
    if line.strip() != word:
        sys.exit(3)  # the harness went away


def batches(n: int, size: int) -> list[list[int]]:
    return [list(range(start, min(n, start + size))) for start in range(0, n, size)]


def units(args: argparse.Namespace, bulk: bool) -> list:
    """What one call enqueues: a batch of indices, or one index."""
    return batches(args.jobs, args.batch) if bulk else list(range(args.jobs))


def deadline(args: argparse.Namespace) -> float:
    return time.monotonic() + args.budget_s if args.budget_s else float("inf")


def finished(args: argparse.Namespace, done: int, started: float) -> dict:
    return {"jobs": done, "seconds": time.perf_counter() - started, "budget_hit": done < args.jobs}


def main(adapter, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.kind == "bulk" and args.mode == "enqueue" and adapter.enqueue_bulk is None:
        emit({"error": "no batch enqueue API", "unsupported": True})
        return
    if getattr(adapter, "is_async", False):
        asyncio.run(_amain(adapter, args))
    else:
        _main(adapter, args)


def _main(a, args: argparse.Namespace) -> None:
    a.open()
    try:
        if args.mode == "prefill":
            bulk = a.enqueue_bulk is not None
            started, stop_at = time.perf_counter(), deadline(args)
            done = 0
            for unit in units(args, bulk):
                if bulk:
                    a.enqueue_bulk("noop", unit)
                else:
                    a.enqueue("noop", unit)
                done += len(unit) if bulk else 1
                if time.monotonic() > stop_at:
                    break
            emit(finished(args, done, started))
        elif args.mode == "enqueue":
            bulk = args.kind == "bulk"
            if bulk:
                a.enqueue_bulk("noop", list(range(min(args.batch, args.warmup))))
            else:
                for i in range(args.warmup):
                    a.enqueue("noop", i)
            emit_ready()
            work = units(args, bulk)
            started, stop_at = time.perf_counter(), deadline(args)
            done = 0
            for unit in work:
                if bulk:
                    a.enqueue_bulk("noop", unit)
                else:
                    a.enqueue("noop", unit)
                done += len(unit) if bulk else 1
                if time.monotonic() > stop_at:
                    break
            emit(finished(args, done, started))
            expect("BYE")
        else:
            waiter = redis.Redis.from_url(args.redis)
            waiter.delete(LATENCY)
            for i in range(args.warmup):
                a.enqueue("lat", i)
                if waiter.blpop([LATENCY], timeout=args.start_timeout if i == 0 else args.timeout) is None:
                    emit({"error": f"warm-up job {i} did not start in time"})
                    return
            emit_ready()
            out, lost = [], 0
            stop_at = time.monotonic() + args.budget_s if args.budget_s else float("inf")
            for i in range(args.jobs):
                if time.monotonic() > stop_at:
                    break
                time.sleep(args.gap_ms / 1000)
                t0 = time.time_ns()
                a.enqueue("lat", i)
                got = waiter.blpop([LATENCY], timeout=args.timeout)
                if got is None:
                    lost += 1
                    continue
                out.append(int(got[1]) - t0)
            emit({"latencies_ns": out, "lost": lost, "clock": "time.time_ns"})
            expect("BYE")
    finally:
        a.close()


def emit_ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    expect("GO")


async def _amain(a, args: argparse.Namespace) -> None:
    await a.open()
    loop = asyncio.get_running_loop()

    async def wait_word(word: str) -> None:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != word:
            sys.exit(3)

    try:
        if args.mode == "prefill":
            bulk = a.enqueue_bulk is not None
            started, stop_at = time.perf_counter(), deadline(args)
            done = 0
            for unit in units(args, bulk):
                if bulk:
                    await a.enqueue_bulk("noop", unit)
                else:
                    await a.enqueue("noop", unit)
                done += len(unit) if bulk else 1
                if time.monotonic() > stop_at:
                    break
            emit(finished(args, done, started))
        elif args.mode == "enqueue":
            bulk = args.kind == "bulk"
            if bulk:
                await a.enqueue_bulk("noop", list(range(min(args.batch, args.warmup))))
            else:
                for i in range(args.warmup):
                    await a.enqueue("noop", i)
            sys.stdout.write("READY\n")
            sys.stdout.flush()
            await wait_word("GO")
            work = units(args, bulk)
            started, stop_at = time.perf_counter(), deadline(args)
            done = 0
            for unit in work:
                if bulk:
                    await a.enqueue_bulk("noop", unit)
                else:
                    await a.enqueue("noop", unit)
                done += len(unit) if bulk else 1
                if time.monotonic() > stop_at:
                    break
            emit(finished(args, done, started))
            await wait_word("BYE")
        else:
            import redis.asyncio as aredis

            waiter = aredis.Redis.from_url(args.redis)
            await waiter.delete(LATENCY)
            for i in range(args.warmup):
                await a.enqueue("lat", i)
                if await waiter.blpop([LATENCY], timeout=args.start_timeout if i == 0 else args.timeout) is None:
                    emit({"error": f"warm-up job {i} did not start in time"})
                    return
            sys.stdout.write("READY\n")
            sys.stdout.flush()
            await wait_word("GO")
            out, lost = [], 0
            stop_at = time.monotonic() + args.budget_s if args.budget_s else float("inf")
            for i in range(args.jobs):
                if time.monotonic() > stop_at:
                    break
                await asyncio.sleep(args.gap_ms / 1000)
                t0 = time.time_ns()
                await a.enqueue("lat", i)
                got = await waiter.blpop([LATENCY], timeout=args.timeout)
                if got is None:
                    lost += 1
                    continue
                out.append(int(got[1]) - t0)
            emit({"latencies_ns": out, "lost": lost, "clock": "time.time_ns"})
            await wait_word("BYE")
            await waiter.aclose()
    finally:
        await a.close()
