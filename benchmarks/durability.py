"""What ``OJS_DURABILITY=replicated`` costs: enqueue and fetch+ack against a primary with one
replica on loopback, once answered by the primary alone (``primary``) and once after ``WAIT 1``
(``replicated``).

    python -m benchmarks.durability [--jobs 2000] [--rounds 5]

Per setting and workload it reports the median over `rounds` of the wall time per job and of this
process' CPU time per job (the client's share, less sensitive to a loaded machine than the wall
time), and the primary's ``WAIT`` calls per job. Workloads:

* **enqueue, one at a time**: one producer, each enqueue awaited before the next;
* **enqueue, 32 at once**: 32 producers (the calls of one event-loop iteration share a WAIT);
* **fetch 10 + ack**: fetch 10 jobs, ack them in one call, until the queue is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import redis

from runtime import timefmt
from runtime.broker.clients import from_url
from runtime.broker.core import Broker, Completion
from runtime.broker.records import NewJob, job_from_body
from runtime.config import Settings
from runtime.embedded_redis import find_server_binary


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(binary: str, folder: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", folder, "--dbfilename", f"{port}.rdb", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not start")


def _wait_replica(port: int) -> None:
    client = redis.Redis(port=port)
    for _ in range(400):
        if client.info("replication").get("slave0", {}).get("state") == "online":
            return
        time.sleep(0.05)
    raise RuntimeError("the replica did not come online")


def _job() -> NewJob:
    return job_from_body(b'{"type": "bench.noop", "args": []}', now_ms=timefmt.now_ms())


async def _enqueue_one_at_a_time(broker: Broker, jobs: int) -> None:
    for _ in range(jobs):
        await broker.enqueue([_job()], now_ms=timefmt.now_ms())


async def _enqueue_32(broker: Broker, jobs: int) -> None:
    async def producer(n: int) -> None:
        for _ in range(n):
            await broker.enqueue([_job()], now_ms=timefmt.now_ms())
    await asyncio.gather(*(producer(jobs // 32) for _ in range(32)))


async def _fetch_ack(broker: Broker, jobs: int) -> None:
    while claimed := await broker.fetch(["default"], count=10, worker_id="bench", visibility_ms=60_000):
        await broker.ack_many([Completion(job_id=f[b"id"].decode(), worker_id="bench", claim=f[b"claim"].decode())
                               for f in claimed])


async def _measure(url: str, durability: str, workload: Callable[[Broker, int], Awaitable[None]], jobs: int,
                   fill: bool) -> tuple[float, float]:
    broker = Broker(from_url(url), Settings(redis_url=url, durability=durability))
    try:
        if fill:
            filler = Broker(broker.redis, Settings(redis_url=url))
            await filler.enqueue([_job() for _ in range(jobs)], now_ms=timefmt.now_ms())
            await filler.close()
        await broker.fetch(["warmup"], count=1)  # the connections open and the library loads
        wall, cpu = time.perf_counter(), time.process_time()
        await workload(broker, jobs)
        return (time.perf_counter() - wall) / jobs, (time.process_time() - cpu) / jobs
    finally:
        await broker.close()
        await broker.redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/durability.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-n", type=int, default=2000)
    parser.add_argument("--rounds", "-r", type=int, default=5)
    args = parser.parse_args()
    binary = find_server_binary()
    folder = tempfile.mkdtemp(prefix="ojs-durability-")
    primary_port, replica_port = _free_port(), _free_port()
    procs = [_start(binary, folder, primary_port)]
    try:
        procs.append(_start(binary, folder, replica_port, "--replicaof", "127.0.0.1", str(primary_port)))
        _wait_replica(primary_port)
        url = f"redis://127.0.0.1:{primary_port}/0"
        admin = redis.Redis(port=primary_port)
        print(f"{binary}; {args.jobs} jobs, median of {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
        print(f"{'workload':<26}{'durability':<12}{'wall µs/job':>12}{'cpu µs/job':>12}{'WAIT/job':>10}")
        for name, workload, fill in (("enqueue, one at a time", _enqueue_one_at_a_time, False),
                                     ("enqueue, 32 at once", _enqueue_32, False),
                                     ("fetch 10 + ack", _fetch_ack, True)):
            for durability in ("primary", "replicated"):
                walls, cpus, waits = [], [], []
                for _ in range(args.rounds):
                    admin.flushall()
                    admin.config_resetstat()
                    wall, cpu = asyncio.run(_measure(url, durability, workload, args.jobs, fill))
                    stats = admin.info("commandstats")
                    walls.append(wall)
                    cpus.append(cpu)
                    waits.append(stats.get("cmdstat_wait", {}).get("calls", 0) / args.jobs)
                print(f"{name:<26}{durability:<12}{statistics.median(walls) * 1e6:>12.0f}"
                      f"{statistics.median(cpus) * 1e6:>12.0f}{statistics.median(waits):>10.2f}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
