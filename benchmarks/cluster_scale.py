"""What a Redis Cluster costs and what it could carry: ``python -m benchmarks.cluster_scale``.

Measured, on this machine: the W2 drain (N no-op jobs waiting, then ``ojs-run benchmarks.ojs_handlers
--processes 2 --concurrency 10``) once on a single Redis and once on a local cluster of three
primaries (tests/fixtures/redis_cluster.py), the namespace ``{ojs}:`` on one of them. For each:
jobs/s, the namespace node's Redis CPU per job (``INFO cpu`` delta / jobs; the handlers' own
``INCR`` lands there too only when its key shares the node, which the output says), the pools' CPU
per job, and Redis commands per job (``INFO commandstats``, scripts' inner commands included).

Projected, not measured (this machine has two cores): a namespace lives on one primary, and one
Redis core carries at most ``1e6 / redis_us_per_job`` jobs/s. K namespaces of equal load over P
primaries, each namespace's slot on the primary that owns it (slots split evenly, as
``redis-cli --cluster create`` does), are carried at most at ``K * capacity / busiest``, where
``busiest`` is the largest number of namespaces on one primary (the cluster is as fast as its
busiest node); the pools need ``jobs/s * pool_us_per_job / 1e6`` cores beside. The output gives
that for 3, 6 and 12 primaries, with the prefixes ``{ojs-0}:`` ... ``{ojs-<K-1>}:``, and how
evenly they spread. One namespace stays on one primary until shards are built (README, How it
works).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from benchmarks.peerdefs import ojs_run
from benchmarks.suite import spawn, stop_group, tree_cpu_s
from runtime import Client, Draft
from runtime.embedded_redis import EmbeddedRedis
from tests.fixtures.redis_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 16384
COUNTER = "bench:done"
DRAIN_TIMEOUT_S = 300


def _enqueue(url: str, jobs: int, batch: int = 1000) -> None:
    async def go() -> None:
        async with Client(url) as client:
            for first in range(0, jobs, batch):
                count = min(batch, jobs - first)
                await client.enqueue_many([Draft(type="bench.noop", args=[], options={"queue": "bench"})] * count)

    asyncio.run(go())


def _redis_cpu_s(node: redis.Redis) -> float:
    cpu = node.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _commands(node: redis.Redis) -> int:
    return sum(int(entry["calls"]) for entry in node.info("commandstats").values())


def drain(url: str, namespace_node: redis.Redis, counter: redis.Redis, jobs: int, log_dir: Path) -> dict[str, Any]:
    """Enqueue `jobs`, then time their drain by two pool processes; CPU and commands per job."""
    _enqueue(url, jobs)
    counter.delete(COUNTER)
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    with open(log_dir / "ojs-run.log", "a") as log:
        proc = spawn([ojs_run(), "benchmarks.ojs_handlers", "--queues", "bench", "--processes", "2",
                      "--concurrency", "10", "--no-http", "--redis", url], env=env, cwd=ROOT, log=log)
    try:
        redis_before = pools_before = 0.0
        commands_before = started_at = 0
        first = last = 0.0
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        done = 0
        while done < jobs:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the drain stopped at {done} of {jobs} jobs; see {log_dir / 'ojs-run.log'}")
            time.sleep(0.01)  # a poll of the handlers' counter, as the peer harness does
            done = int(counter.get(COUNTER) or 0)
            now = time.monotonic()
            if done and not first:
                first, redis_before, pools_before = now, _redis_cpu_s(namespace_node), tree_cpu_s([proc.pid])
                commands_before, started_at = _commands(namespace_node), done
            last = now
        redis_s = _redis_cpu_s(namespace_node) - redis_before
        pools_s = tree_cpu_s([proc.pid]) - pools_before
        commands = _commands(namespace_node) - commands_before
    finally:
        stop_group(proc)
    timed = jobs - started_at
    span = max(last - first, 1e-9)
    return {"jobs": timed, "jobs_per_s": timed / span, "redis_us_per_job": redis_s * 1e6 / timed,
            "pools_us_per_job": pools_s * 1e6 / timed, "commands_per_job": commands / timed}


def spread(primaries: int, namespaces: int) -> dict[str, Any]:
    """How `namespaces` prefixes fall on `primaries` evenly split primaries."""
    per = [0] * primaries
    for i in range(namespaces):
        slot = key_slot(("{ojs-" + str(i) + "}:").encode())
        per[min(slot * primaries // SLOTS, primaries - 1)] += 1
    return {"primaries": primaries, "namespaces": namespaces, "busiest": max(per), "idle": per.count(0),
            "per_primary": per}


def project(measured: dict[str, Any], primaries: int, namespaces: int) -> dict[str, Any]:
    capacity = 1e6 / measured["redis_us_per_job"]  # one primary's jobs/s
    where = spread(primaries, namespaces)
    jobs_per_s = namespaces * capacity / where["busiest"]
    return {**where, "jobs_per_s": round(jobs_per_s), "pool_cores": round(jobs_per_s * measured["pools_us_per_job"] / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", "-n", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ojs-cluster-scale-"))
    results: dict[str, Any] = {"jobs": opts.jobs}
    with EmbeddedRedis(persistence=False) as single:
        node = redis.Redis.from_url(single.url)
        results["single"] = drain(single.url, node, node, opts.jobs, log_dir)
        node.close()
    with LocalCluster(log_dir / "cluster") as cluster:
        owner = cluster.node_for_slot(cluster.slot_of("{ojs}:"))
        counter_node = cluster.node_for_slot(cluster.slot_of(COUNTER))
        results["cluster"] = drain(cluster.seed_url, owner.raw_client(), counter_node.raw_client(), opts.jobs, log_dir)
        results["cluster"]["counter_on_namespace_node"] = counter_node is owner
    results["projection"] = [project(results["cluster"], p, k) for p in (3, 6, 12) for k in (p, 4 * p)]
    for kind in ("single", "cluster"):
        r = results[kind]
        print(f"{kind:8} {r['jobs_per_s']:9,.0f} jobs/s  redis {r['redis_us_per_job']:5.1f} us/job  "
              f"pools {r['pools_us_per_job']:5.1f} us/job  {r['commands_per_job']:5.2f} commands/job")
    print("projection (measured cluster cost per job; a namespace per primary's share):")
    for p in results["projection"]:
        print(f"  {p['primaries']:2} primaries, {p['namespaces']:2} namespaces: busiest holds {p['busiest']}, "
              f"{p['idle']} idle -> {p['jobs_per_s']:,} jobs/s, {p['pool_cores']} pool cores")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
