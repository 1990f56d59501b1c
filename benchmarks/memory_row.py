"""The memory row of the comparison run: Redis bytes per waiting job, and an idle worker's RSS.

* ``mem_bytes_per_job``: on a flushed Redis, INFO ``used_memory`` before and after the producer's
  ``prefill`` of ``--memory-jobs`` (100,000) no-op jobs through the system's batch API, ``--batch``
  (1,000) per call (ojs ``Client.enqueue_many``, BullMQ ``addBulk``; one call per job for a system
  without one), with no worker running: every job still waits. The delta over the jobs is what a
  waiting job costs, its share of the fixed structures included (ojs: the capped event stream).
  The JSON adds the keys per job and a breakdown by key pattern (``MEMORY USAGE`` of every key,
  ids replaced by ``*``) with each pattern's type and encoding, so the figure can be read.
* ``mem_worker_rss``: one worker process (ojs: ``ojs-run --processes 1``, its pool process),
  started on a flushed Redis, runs one no-op job; two seconds after it, the RSS of the largest
  process of the tree that has no children of its own (the one that runs handlers: an ojs pool,
  BullMQ's node process). The JSON has every process of the tree (RSS and USS).

Redis runs with its stock settings (no ``hash-max-listpack-*`` or other tuning), as for the other
rows.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from benchmarks.suite import Bench, PeerState

MIB = 1024 * 1024
SETTLE_S = 2.0
FIRST_JOB_TIMEOUT_S = 60.0
_CREDENTIALS = re.compile(r"//[^/@\s]*@")  # a URL's user and password, kept out of the JSON
_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,}|\d+")


def key_pattern(key: str) -> str:
    """A key with its ids (UUIDs, long hex, numbers) as ``*``: one row per kind of key."""
    return _IDS.sub("*", key)


def memory_breakdown(client: Any, jobs: int) -> list[dict[str, Any]]:
    """Every key's MEMORY USAGE, summed by pattern, largest first (bytes per job of each)."""
    groups: dict[str, dict[str, Any]] = {}
    batch: list[str] = []

    def measure(keys: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(keys, pipe.execute(), strict=True):
            group = groups.setdefault(key_pattern(key), {"keys": 0, "bytes": 0, "example": key})
            group["keys"] += 1
            group["bytes"] += int(used or 0)

    for key in client.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            measure(batch)
            batch = []
    if batch:
        measure(batch)
    out = []
    for pattern, group in sorted(groups.items(), key=lambda kv: -kv[1]["bytes"]):
        example = group.pop("example")
        out.append({"pattern": pattern, **group, "bytes_per_job": round(group["bytes"] / max(1, jobs), 1),
                    "type": client.type(example), "encoding": client.object("encoding", example)})
    return out


def run_memory(bench: Bench, state: PeerState) -> dict[str, Any]:
    from benchmarks.suite import COUNTER, Producer, StepFailed, stop_group

    peer, env = state.peer, state.env
    assert env is not None and bench.redis is not None
    opts = bench.opts
    label = f"{peer.name}-mem"
    log = bench.log_file(label)
    workers = []
    try:
        # Bytes per waiting job: no worker runs, so every job stays queued.
        bench.flush()
        info0, keys0 = bench.redis.info("memory"), bench.redis.dbsize()
        prod = Producer(peer.producer(env, "prefill", "--jobs", str(opts.memory_jobs), "--batch", str(opts.batch),
                                      "--budget-s", str(opts.budget_s * 6), "--redis", bench.url),
                        peer.environ(env, bench.url, opts.concurrency), peer.cwd(), log)
        try:
            data = prod.result(opts.step_timeout_s)
        finally:
            stop_group(prod.proc, 5.0)
        jobs = int(data["jobs"])
        if jobs <= 0:
            raise StepFailed("the producer enqueued nothing")
        info1, keys1 = bench.redis.info("memory"), bench.redis.dbsize()
        per_job = (int(info1["used_memory"]) - int(info0["used_memory"])) / jobs
        detail: dict[str, Any] = {
            "jobs": jobs, "budget_hit": jobs < opts.memory_jobs, "batch": opts.batch,
            "used_memory_before": int(info0["used_memory"]), "used_memory_after": int(info1["used_memory"]),
            "bytes_per_job": round(per_job, 1), "keys_per_job": round((keys1 - keys0) / jobs, 3),
            "breakdown": memory_breakdown(bench.redis, jobs),
        }

        # An idle worker process, after one job.
        bench.flush()
        workers = bench.start_workers(state, 1, log)
        prod = Producer(peer.producer(env, "prefill", "--jobs", "1", "--batch", "1", "--redis", bench.url),
                        peer.environ(env, bench.url, opts.concurrency), peer.cwd(), log)
        try:
            prod.result(opts.step_timeout_s)
        finally:
            stop_group(prod.proc, 5.0)
        deadline = time.monotonic() + FIRST_JOB_TIMEOUT_S
        while int(bench.redis.get(COUNTER) or 0) < 1:
            if time.monotonic() > deadline:
                raise StepFailed(f"the worker ran no job in {FIRST_JOB_TIMEOUT_S:.0f} s")
            if all(w.poll() is not None for w in workers):
                raise StepFailed("the worker exited")
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        processes = worker_processes([w.pid for w in workers])
        leaves = [p for p in processes if p["leaf"]] or processes
        if not leaves:
            raise StepFailed("no worker process to measure")
        rss = max(p["rss_mib"] for p in leaves)
        detail["worker_processes"] = processes
        detail["worker_rss_mib"] = rss
        return {"mem_bytes_per_job": per_job, "mem_worker_rss": rss, "_detail": detail}
    except StepFailed as err:
        raise StepFailed(f"{err}\n{bench.log_tail(label)}") from None
    finally:
        for w in workers:
            stop_group(w)
        log.close()


def worker_processes(pids: list[int]) -> list[dict[str, Any]]:
    """Each process of these trees: name, RSS and USS (MiB), and whether it has children."""
    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                mem = proc.memory_full_info()
                leaf = not proc.children()
                cmdline = _CREDENTIALS.sub("//***@", " ".join(proc.cmdline()))[:160]
            except psutil.Error:
                continue
            out.append({"pid": proc.pid, "cmdline": cmdline, "leaf": leaf, "rss_mib": round(mem.rss / MIB, 1),
                        "uss_mib": round(mem.uss / MIB, 1)})
    return out
