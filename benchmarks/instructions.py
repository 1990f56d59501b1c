"""Instructions per drained no-op job, pool and Redis apart: a measure a busy machine cannot skew.

On a shared 2-core machine the harness's jobs/s and CPU µs swing by a quarter between runs, which
hides a change of a few percent. Valgrind counts instructions instead, the same on a loaded
machine as on a quiet one, so two versions can be compared one after the other:

    python benchmarks/instructions.py                           # the runtime this venv imports
    PYTHONPATH=../other-checkout python benchmarks/instructions.py   # another version's runtime

(run as a file, so that PYTHONPATH, not the current directory, decides which `runtime` is measured).

* pool: a `Pool` process (concurrency 10, no-op handler) drains N jobs under
  ``valgrind --tool=cachegrind``; the count at 500 jobs is taken from the count at N, so start-up
  and imports drop out. The pool's time windows (ack batching, prefetch hold, metric tally) are
  stretched 50 times, as valgrind slows the process about that much, so it batches as it would.
* redis: the Redis server runs under ``valgrind --tool=callgrind``; counters are zeroed after
  the jobs are enqueued, then dumped after the fetches (5 jobs per call, with the reply a pool
  asks for) and after the acks.

With ``--traced`` the pool exports its spans over OTLP (to a sink in this process that answers
every export) and only the pool's count is taken: the cost of tracing per job (the otel extra).

With ``--backlog B`` only Redis is measured, twice: the same N jobs fetched and acked off the head
of a queue that holds N jobs, then of one that holds N + B (the backlog row's question: does a
drained job cost more when many wait behind it?). Both stores are filled by a Redis outside
valgrind and loaded from its RDB file, so the filling costs seconds, not valgrind's hours.

Needs valgrind (Debian: ``apt-get install valgrind``); a few minutes. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

SLOWDOWN = 50  # how much slower a process runs under valgrind, roughly
# Commands get no deadline (redis_command_timeout_ms=0): under valgrind one batched script call
# takes many times the 5 s a live server is allowed.
BASELINE_JOBS = 500
FETCH_COUNT = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, prefix: list[str], *extra: str, wait_s: float = 60) -> subprocess.Popen[bytes]:
    from runtime.embedded_redis import find_server_binary

    proc = subprocess.Popen([*prefix, str(find_server_binary()), "--port", str(port), "--save", "",
                             "--appendonly", "no", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.ping()
            return proc
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            if time.monotonic() > deadline:
                proc.terminate()  # not left running behind the error
                proc.wait()
                raise
            time.sleep(0.1)


def _fill(url: str, n: int) -> None:
    from redis.asyncio import Redis

    from runtime import timefmt
    from runtime.broker.core import Broker
    from runtime.broker.records import job_from_body
    from runtime.config import Settings

    async def go() -> None:
        client = Redis.from_url(url)
        broker = Broker(client, Settings(redis_url=url, redis_command_timeout_ms=0))
        now = timefmt.now_ms()
        body = msgspec.json.encode({"type": "bench.noop", "args": [1]})
        for i in range(0, n, 500):
            await broker.enqueue([job_from_body(body, now_ms=now) for _ in range(min(500, n - i))], now_ms=now)
        await broker.close()
        await client.aclose()

    asyncio.run(go())


def drain_in_pool(url: str, n: int) -> None:
    """The measured process of the pool side (run under cachegrind by `pool_instructions`)."""
    import uvloop

    from runtime import metrics
    from runtime.config import Settings
    from runtime.handlers import HandlerSpec, Registry
    from runtime.liveness import Liveness
    from runtime.worker import Pool, PoolConfig

    async def noop(ctx: object, *args: object) -> None:
        return None

    metrics.Tally.__init__.__defaults__ = (0.005 * SLOWDOWN,)
    registry = Registry(module="inline", handlers={
        "bench.noop": HandlerSpec(job_type="bench.noop", fn=noop, is_async=True)})
    config = PoolConfig(module="inline", settings=Settings(redis_url=url, redis_command_timeout_ms=0), worker_id="instructions",
                        queues=(("default", 1),), concurrency=10, max_jobs=n,
                        ack_window_s=0.002 * SLOWDOWN, prefetch_hold_s=0.2 * SLOWDOWN)
    from runtime import trace_export

    trace_export.start("pool")  # with --traced only: the environment names an endpoint
    uvloop.run(Pool(config, registry=registry, liveness=Liveness()).run())
    trace_export.stop()


def _otlp_sink() -> str:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _cachegrind_total(output: str) -> int:
    found = re.search(r"I\s+refs:\s+([\d,]+)", output)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{output[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _pool_run(n: int) -> int:
    port = _free_port()
    server = _start_redis(port, [])
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _fill(url, n)
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, str(Path(__file__).resolve()), "--drain-in-pool", url, str(n)],
            capture_output=True, text=True, env=os.environ, check=True)
        return _cachegrind_total(out.stderr)
    finally:
        server.terminate()
        server.wait()


def pool_instructions(n: int) -> float:
    return (_pool_run(n) - _pool_run(BASELINE_JOBS)) / (n - BASELINE_JOBS)


async def _fetch_then_ack(url: str, n: int, dump: object) -> None:
    from redis.asyncio import Redis

    from runtime.broker.core import Broker, Completion
    from runtime.config import Settings

    client = Redis.from_url(url)
    broker = Broker(client, Settings(redis_url=url, redis_command_timeout_ms=0))
    # Older versions (to compare against) had neither the fetch's `idle` nor the claim's token.
    says_idle = {"idle": False} if "idle" in inspect.signature(broker.fetch).parameters else {}
    # Nor the pool's lean reply (a pool asks for it; the HTTP binding takes the whole hash).
    if "lean" in inspect.signature(broker.fetch).parameters:
        says_idle["lean"] = True
    tokens = "claim" in Completion.__struct_fields__
    batches = []
    while sum(map(len, batches)) < n:
        got = await broker.fetch(["default"], count=FETCH_COUNT, worker_id="w1", visibility_ms=600_000, **says_idle)
        if not got:
            break
        batches.append(got)
    dump()  # type: ignore[operator]
    for got in batches:
        await broker.ack_many([Completion(job_id=h[b"id"].decode(), worker_id="w1", attempt=int(h[b"attempt"]),
                                          **({"claim": h[b"claim"].decode()} if tokens else {})) for h in got])
    dump()  # type: ignore[operator]
    await broker.close()
    await client.aclose()


# Where a script call's instructions go, by the inclusive cost of Redis' own functions (a server
# built with symbols: the Debian binary is stripped). Lua's own work is the call's total less the
# commands it runs (redis.call, with their argument and reply conversion).
SPLIT_FUNCTIONS = {"script call": "luaCallFunction", "redis.call": "luaRedisGenericCommand",
                   "the commands themselves": "scriptCall", "Lua garbage collection": "luaC_step"}


def inclusive_costs(path: Path, names: set[str]) -> dict[str, int]:
    """The inclusive instruction count of each named function in a callgrind output file (its
    own lines and the calls it makes, summed over every context it appears in)."""
    ids: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = None
    for line in path.read_text().splitlines():
        named = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if named:
            kind, num, name = named.groups()
            if name:
                ids[num] = name  # a recursive context ("name'2") is not counted again
            if kind == "fn":
                current = ids.get(num)
            continue
        if current in names and (line[:1].isdigit() or line[:1] in "+-*"):
            parts = line.split()
            if len(parts) >= 2:
                costs[current] = costs.get(current, 0) + int(parts[1])
    return costs


def redis_split(path: Path, n: int) -> str:
    costs = inclusive_costs(path, set(SPLIT_FUNCTIONS.values()))
    if not costs:
        return "no symbols in the server binary: build Redis from source and set OJS_REDIS_SERVER_BIN"
    got = {label: costs.get(fn, 0) / n for label, fn in SPLIT_FUNCTIONS.items()}
    lua = got["script call"] - got["redis.call"]
    return (f"script calls {got['script call']:,.0f}: redis.call {got['redis.call']:,.0f} (the commands themselves "
            f"{got['the commands themselves']:,.0f}), Lua's own work {lua:,.0f} (its garbage collection "
            f"{got['Lua garbage collection']:,.0f})")


def redis_instructions(n: int, *, waiting: int | None = None, split: list[str] | None = None) -> tuple[float, float]:
    """(fetch, ack) instructions of the Redis server per job; with `waiting`, the store is filled
    with that many jobs (outside valgrind, loaded from an RDB file) and N are drained off its head.
    With `split`, a list: the fetch's and the ack's redis_split are appended to it."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        load: tuple[str, ...] = ()
        if waiting is not None:
            filler = _start_redis(port, [], "--dir", tmp)
            try:
                _fill(f"redis://127.0.0.1:{port}/0", waiting)
                import redis

                redis.Redis(port=port, socket_timeout=3600).save()
            finally:
                filler.terminate()
                filler.wait()
            load = ("--dir", tmp, "--dbfilename", "dump.rdb")
        server = _start_redis(port, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"], *load,
                              wait_s=3600)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            if waiting is None:
                _fill(url, n)
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
            asyncio.run(_fetch_then_ack(url, n, lambda: subprocess.run(
                ["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)))
        finally:
            server.terminate()
            server.wait()
        totals = []
        for part in (1, 2):
            text = subprocess.run(["callgrind_annotate", f"{out}.{part}"], capture_output=True, text=True,
                                  check=True).stdout
            found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
            if found is None:
                raise RuntimeError(f"no total in callgrind's dump {out}.{part}")
            totals.append(int(found.group(1).replace(",", "")) / n)
            if split is not None:
                split.append(redis_split(Path(f"{out}.{part}"), n))
        return totals[0], totals[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/instructions.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-n", type=int, default=3000, help="jobs drained (default 3000)")
    parser.add_argument("--drain-in-pool", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help="the pool exports its spans over OTLP; pool count only")
    parser.add_argument("--backlog", type=int, metavar="B",
                        help="Redis only: N jobs drained off N waiting, then off N + B waiting")
    parser.add_argument("--split", action="store_true",
                        help="Redis only: where its instructions go (needs a server built with symbols)")
    args = parser.parse_args(argv)
    if args.drain_in_pool:
        drain_in_pool(args.drain_in_pool[0], int(args.drain_in_pool[1]))
        return
    missing = [tool for tool in ("valgrind", "callgrind_control", "callgrind_annotate") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (Debian: apt-get install valgrind)")
    if args.jobs <= BASELINE_JOBS:
        sys.exit(f"--jobs must be above {BASELINE_JOBS}")
    for name in [k for k in os.environ if k.startswith("OTEL_") or k.startswith("OJS_OTEL_")]:
        del os.environ[name]  # the pool's environment decides alone whether it traces
    if args.traced:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = _otlp_sink()
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = str(5000 * SLOWDOWN)  # its default, stretched
        print(f"instructions per no-op job, traced: pool {pool_instructions(args.jobs):,.0f}")
        return
    if args.backlog:
        for waiting in (args.jobs, args.jobs + args.backlog):
            fetch, ack = redis_instructions(args.jobs, waiting=waiting)
            print(f"redis instructions per no-op job, {args.jobs} drained off {waiting:,} waiting: "
                  f"{fetch + ack:,.0f} (fetch {fetch:,.0f}, ack {ack:,.0f})", flush=True)
        return
    if args.split:
        split: list[str] = []
        fetch, ack = redis_instructions(args.jobs, split=split)
        print(f"redis instructions per no-op job: fetch {fetch:,.0f} ({split[0]}); ack {ack:,.0f} ({split[1]})")
        return
    pool = pool_instructions(args.jobs)
    fetch, ack = redis_instructions(args.jobs)
    print(f"instructions per no-op job: pool {pool:,.0f}; redis {fetch + ack:,.0f} "
          f"(fetch {fetch:,.0f}, ack {ack:,.0f}, {FETCH_COUNT} jobs per call)")


if __name__ == "__main__":
    main()
