"""Failover under load: a primary, a replica and three Sentinels on loopback, `ojs-run` on a
``redis+sentinel://`` URL, a producer enqueueing steadily through the Client, and the primary
SIGKILLed half-way. Sentinel promotes the replica; the killed node comes back as the new
primary's replica (what its service manager would do), so that replicated writes can be
confirmed again.

Replication on loopback is so quick that a kill at a random moment seldom catches a write the
replica lacks. So the replica lags on purpose first: its replication link goes silent (a
blackholed proxy) while the primary runs at least `LAG_CALLS` more script calls (writes the
replica cannot have), then the primary is killed. Everything the primary answered in that window
is what asynchronous replication loses.

Counted, from the promoted primary and from the handlers' own records (kept in the test's other
Redis, which no failover touches):

* enqueues lost: jobs whose enqueue was answered to the producer and that the new primary does
  not have;
* completions lost: a job that ran to completion twice although neither run's ack was refused
  (the first completion was answered, then forgotten in the failover). A second run is allowed
  only as the lease rules allow: the first run's claim was lost in the failover (fetches are not
  replicated synchronously), so its ack is refused (its pool logs "not settled by this worker");
* duplicates: every run beyond one per job, printed.

With ``OJS_DURABILITY=replicated`` both losses must be 0; with the default (``primary``) the test
reports them (``-s``). In both, everything must settle within seconds of the promotion (far less
than a lease): every job the new primary has completes, nothing is left active or waiting, the
pools say they lost Redis and found it again, and ``/ready`` said "not ready" during the gap and
"ready" after it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from runtime import Client, Draft
from runtime.broker.keys import Keys
from runtime.config import settings_from_env
from runtime.embedded_redis import ServerBinaryNotFoundError
from runtime.errors import Duplicate
from runtime.ids import uuid7
from tests.conftest import POOL_HANDLERS, skip_or_fail
from tests.fixtures.procs import Runtime, free_port, wait_until
from tests.fixtures.sentinel_cluster import Node, SentinelCluster, wait_replica_online

pytestmark = pytest.mark.slow

KEYS = Keys()
WORK_S = 0.01
PROCESSES, CONCURRENCY = 2, 8
BEFORE_KILL = 300  # completions before the replica is stopped and then the primary killed
LAG_CALLS = 60  # script calls the primary runs while its replica is stopped
AFTER_PROMOTION = 300  # jobs acknowledged to the producer after the promotion, before it stops
ENQUEUE_PAUSE_S = 0.004  # the producer's pace: a steady load, not a flood
SETTLE_BOUND_S = 20.0  # a third of a lease: a job that waited for its lease to lapse fails this


class Producer:
    """Enqueues `count.job` jobs one at a time, each with an id of its own, from a thread with
    its own event loop. An enqueue that fails is repeated with the same id until it is answered
    (a 409 duplicate means the first one got in); `acknowledged` holds the answered ids."""

    def __init__(self, url: str, durability: str) -> None:
        self.settings = settings_from_env(redis_url=url, durability=durability)
        self.url = url
        self.acknowledged: list[str] = []
        self.acknowledged_at: list[float] = []
        self.failures: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    async def _run(self) -> None:
        async with Client(self.url, settings=self.settings) as client:
            while not self.stop.is_set():
                job_id = uuid7()
                while not self.stop.is_set():
                    try:
                        await client.enqueue_many([Draft(type="count.job", args=[WORK_S], id=job_id)])
                    except Duplicate:
                        pass
                    except Exception as err:  # the store unreachable, or the write not confirmed
                        self.failures[type(err).__name__] += 1
                        await asyncio.sleep(0.05)
                        continue
                    self.acknowledged.append(job_id)
                    self.acknowledged_at.append(time.monotonic())
                    break
                await asyncio.sleep(ENQUEUE_PAUSE_S)

    def acknowledged_since(self, moment: float) -> int:
        return sum(1 for at in list(self.acknowledged_at) if at >= moment)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the producer did not stop"


def _ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _runs(records: redis.Redis) -> Counter[str]:
    """Completed handler runs per job id (count.job counts them per job and attempt)."""
    runs: Counter[str] = Counter()
    for key, count in records.hgetall("pooltest:done").items():
        runs[key.decode().rsplit(":", 1)[0]] += int(count)
    return runs


def _script_calls(node: Node) -> int:
    stats = node.client().info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


def _states(store: redis.Redis, job_ids: list[str]) -> list[str]:
    pipe = store.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(KEYS.job(job_id), "state")
    return [(s or b"").decode() for s in pipe.execute()]


@pytest.mark.parametrize("durability", ["replicated", "primary"])
def test_failover_under_load(durability: str, tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "cluster").mkdir()
    try:
        cluster = SentinelCluster(tmp_path / "cluster")
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    records = redis.Redis.from_url(redis_url)
    http_port = free_port()
    runtime = None
    producer = Producer(cluster.url, durability)
    try:
        cluster.start()
        runtime = Runtime(
            cluster.url, POOL_HANDLERS, "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY),
            "--http", f"127.0.0.1:{http_port}", "--heartbeat-interval", "1",
            log_path=tmp_path / "ojs-run.log",
            extra_env={"POOL_TEST_REDIS_URL": redis_url, "OJS_DURABILITY": durability},
        )
        runtime.wait_ready(PROCESSES)
        wait_until(lambda: _ready_status(http_port) == 200, timeout_s=20, what="/ready before the failover")
        producer.start()
        wait_until(lambda: sum(_runs(records).values()) >= BEFORE_KILL, timeout_s=60,
                   what=f"{BEFORE_KILL} completions before the kill")

        old = cluster.primary()
        calls_before = _script_calls(old)
        cluster.links[0].blackhole()
        wait_until(lambda: _script_calls(old) >= calls_before + LAG_CALLS, timeout_s=10,
                   what="writes the cut-off replica cannot have")
        old.kill()
        killed_at = time.monotonic()
        wait_until(lambda: _ready_status(http_port) != 200, timeout_s=10, what="/ready to say not ready")
        new_port = cluster.wait_promoted(old.port)
        promoted_at = time.monotonic()
        old.start("--replicaof", "127.0.0.1", str(new_port))
        new = cluster.node_on(new_port)
        wait_replica_online(new)

        wait_until(lambda: producer.acknowledged_since(promoted_at) >= AFTER_PROMOTION, timeout_s=30,
                   what=f"{AFTER_PROMOTION} enqueues acknowledged after the promotion")
        producer.finish()
        store = new.client()
        acknowledged = list(dict.fromkeys(producer.acknowledged))
        present = [job_id for job_id, state in zip(acknowledged, _states(store, acknowledged), strict=True)
                   if state]
        enqueues_lost = len(acknowledged) - len(present)

        def settled() -> bool:
            states = Counter(_states(store, present))
            waiting = sum(store.zcard(KEYS.available(q.decode())) for q in store.hkeys(KEYS.queues))
            return states.get("completed", 0) == len(present) and not waiting and not store.zcard(KEYS.active)

        try:
            wait_until(settled, timeout_s=SETTLE_BOUND_S, what="every job on the new primary completed")
        except AssertionError:
            raise AssertionError(f"not settled: {Counter(_states(store, present))}") from None
        settled_after_s = time.monotonic() - promoted_at

        log = runtime.log()
        runs = _runs(records)
        refused = Counter(re.findall(r"job (\S+) not settled by this worker", log))
        duplicates = sum(n - 1 for n in runs.values() if n > 1)
        completions_lost = sum(max(0, runs[j] - 1 - refused[j]) for j in runs)
        never_ran = [j for j in present if runs[j] == 0]
        report = (f"durability={durability}: {len(acknowledged)} enqueues acknowledged, {enqueues_lost} lost; "
                  f"{completions_lost} completions lost; {duplicates} duplicate run(s) ({sum(refused.values())} "
                  f"refused ack(s)); failover {promoted_at - killed_at:.1f}s, settled {settled_after_s:.1f}s "
                  f"after it; producer retries {dict(producer.failures)}")
        print(report)

        assert not never_ran, f"{len(never_ran)} job(s) completed without a recorded run: {report}"
        assert "cannot reach Redis" in log and "reaches Redis again" in log, "the pools did not report the gap"
        wait_until(lambda: _ready_status(http_port) == 200, timeout_s=10, what="/ready after the failover")
        if durability == "replicated":
            assert enqueues_lost == 0, report
            assert completions_lost == 0, report
    finally:
        producer.stop.set()
        if runtime is not None:
            runtime.stop()
            print(f"--- ojs-run.log\n{runtime.log()[-20000:]}")
        cluster.stop()
        records.close()
