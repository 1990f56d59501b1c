"""Instructions per enqueue of the Python producer (``runtime.client.Client``), one at a time and
in batches, under cachegrind: the client's own cost, counted the same on a busy machine as on a
quiet one; with ``--redis``, the Redis server's instructions for the same enqueues instead
(callgrind, zeroed after the warm-up).

    python benchmarks/client_instructions.py [--jobs 3000] [--batch 1000] [--only single|batch] [--redis]
    PYTHONPATH=../other-checkout python benchmarks/client_instructions.py   # another version

Each figure is the count at `--jobs` minus the count at a tenth of it, over the difference, so
start-up and imports drop out. User-space instructions only: the system calls of a round trip
(one write, one read per enqueue) are not in it. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from instructions import _cachegrind_total, _free_port, _start_redis  # same folder: run as a file

WARMUP = 200


def enqueue_in_client(url: str, mode: str, n: int, batch: int, *, before: Callable[[], None] = lambda: None,
                      after: Callable[[], None] = lambda: None) -> None:
    """The measured process (run under cachegrind by `client_instructions`); `before` and
    `after` run around the measured enqueues."""
    import asyncio

    import uvloop

    from runtime.client import Client, Draft

    async def go() -> None:
        client = Client(url)
        for i in range(WARMUP):
            await client.enqueue("bench.noop", [i], queue="bench")
        before()
        if mode == "single":
            for i in range(n):
                await client.enqueue("bench.noop", [i], queue="bench")
        else:
            for first in range(0, n, batch):
                await client.enqueue_many([Draft(type="bench.noop", args=[i], options={"queue": "bench"})
                                           for i in range(first, min(n, first + batch))])
        after()
        await client.close()

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(go())


def _run(url: str, mode: str, n: int, batch: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, str(Path(__file__).resolve()), "--enqueue-in-client", url, mode, str(n), str(batch)],
        capture_output=True, text=True, env=os.environ, check=True)
    return _cachegrind_total(out.stderr)


def client_instructions(mode: str, n: int, batch: int) -> float:
    port = _free_port()
    server = _start_redis(port, [])
    try:
        url = f"redis://127.0.0.1:{port}/0"
        low = max(batch if mode == "batch" else 1, n // 10)
        return (_run(url, mode, n, batch) - _run(url, mode, low, batch)) / (n - low)
    finally:
        server.terminate()
        server.wait()


def redis_instructions(mode: str, n: int, batch: int) -> float:
    """The Redis server's instructions per job for the same enqueues."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = _start_redis(port, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        try:
            def control(flag: str) -> None:
                subprocess.run(["callgrind_control", flag, str(server.pid)], capture_output=True, check=True)

            os.environ["OJS_REDIS_COMMAND_TIMEOUT_MS"] = "0"  # a call under callgrind takes many seconds
            enqueue_in_client(f"redis://127.0.0.1:{port}/0", mode, n, batch,
                              before=lambda: control("-z"), after=lambda: control("-d"))
        finally:
            server.terminate()
            server.wait()
        text = subprocess.run(["callgrind_annotate", f"{out}.1"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    if found is None:
        raise RuntimeError("no total in callgrind's dump")
    return int(found.group(1).replace(",", "")) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--only", choices=["single", "batch"])
    parser.add_argument("--redis", action="store_true", help="count the Redis server's instructions instead")
    parser.add_argument("--enqueue-in-client", nargs=4, metavar=("URL", "MODE", "N", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue_in_client:
        url, mode, n, batch = args.enqueue_in_client
        enqueue_in_client(url, mode, int(n), int(batch))
        return
    for mode in ("single", "batch"):
        if args.only in (None, mode):
            jobs = args.jobs if mode == "single" else max(args.jobs, 10 * args.batch)
            if args.redis:
                print(f"redis instructions per job, {mode}: {redis_instructions(mode, jobs, args.batch):,.0f}")
            else:
                print(f"client instructions per job, {mode}: {client_instructions(mode, jobs, args.batch):,.0f}")


if __name__ == "__main__":
    main()
