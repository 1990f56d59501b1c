"""Redis instructions per single-job enqueue (one enqueue.lua call each), under callgrind: what
the schema registry's generation check costs the enqueue path, counted the same on a busy machine
as on a quiet one.

    python benchmarks/enqueue_instructions.py [--jobs 2000] [--schema-for-other-type]
    PYTHONPATH=../other-checkout python benchmarks/enqueue_instructions.py   # another version

With --schema-for-other-type a schema is registered for a type the measured jobs do not have
(the registry is not empty, the jobs are not checked). Also prints the Python CPU time per
enqueue (process time: indicative only, a busy machine skews it). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
import time
from pathlib import Path

from instructions import _free_port, _start_redis  # same folder: run as a file


async def _enqueue(url: str, n: int, schema_for_other_type: bool, zero: object, dump: object) -> float:
    from redis.asyncio import Redis

    from runtime import timefmt
    from runtime.broker.core import Broker
    from runtime.broker.records import job_from_body
    from runtime.config import Settings

    client = Redis.from_url(url)
    broker = Broker(client, Settings(redis_url=url, key_prefix="{bench}:", redis_command_timeout_ms=0))
    body = b'{"type":"bench.noop","args":[1,"two"],"options":{"queue":"bench"}}'
    if schema_for_other_type and hasattr(broker, "schemas"):
        await broker.schemas.register("bench.other", "1", {"type": "array"}, now_ms=timefmt.now_ms())
    for _ in range(50):  # warm up: the library is loaded, the registry's generation learnt
        now = timefmt.now_ms()
        await broker.enqueue([job_from_body(body, now_ms=now)], now_ms=now)
    zero()  # type: ignore[operator]
    started = time.process_time()
    for _ in range(n):
        now = timefmt.now_ms()
        await broker.enqueue([job_from_body(body, now_ms=now)], now_ms=now)
    cpu = time.process_time() - started
    dump()  # type: ignore[operator]
    await broker.close()
    await client.aclose()
    return cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--schema-for-other-type", action="store_true")
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = _start_redis(port, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        try:
            def control(flag: str) -> None:
                subprocess.run(["callgrind_control", flag, str(server.pid)], capture_output=True, check=True)

            cpu = asyncio.run(_enqueue(f"redis://127.0.0.1:{port}/0", args.jobs, args.schema_for_other_type,
                                       lambda: control("-z"), lambda: control("-d")))
        finally:
            server.terminate()
            server.wait()
        text = subprocess.run(["callgrind_annotate", f"{out}.1"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    if found is None:
        raise RuntimeError("no total in callgrind's dump")
    print(f"redis instructions per enqueue: {int(found.group(1).replace(',', '')) / args.jobs:,.0f}")
    print(f"python cpu per enqueue (indicative): {cpu * 1e6:.0f} us")


if __name__ == "__main__":
    main()
