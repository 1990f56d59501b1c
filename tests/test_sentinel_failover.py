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

import time
from pathlib import Path

import pytest
import redis

from runtime.embedded_redis import ServerBinaryNotFoundError
from tests.conftest import POOL_HANDLERS, skip_or_fail
from tests.fixtures.failover_load import (
    Producer,
    completed_runs,
    ready_status,
    script_calls,
    settle_after_promotion,
)
from tests.fixtures.procs import Runtime, free_port, wait_until
from tests.fixtures.sentinel_cluster import SentinelCluster, wait_replica_online

pytestmark = pytest.mark.slow

PROCESSES, CONCURRENCY = 2, 8
BEFORE_KILL = 300  # completions before the replica is stopped and then the primary killed
LAG_CALLS = 60  # script calls the primary runs while its replica is stopped


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
        wait_until(lambda: ready_status(http_port) == 200, timeout_s=20, what="/ready before the failover")
        producer.start()
        wait_until(lambda: sum(completed_runs(records).values()) >= BEFORE_KILL, timeout_s=60,
                   what=f"{BEFORE_KILL} completions before the kill")

        old = cluster.primary()
        calls_before = script_calls(old.client())
        cluster.links[0].blackhole()
        wait_until(lambda: script_calls(old.client()) >= calls_before + LAG_CALLS, timeout_s=10,
                   what="writes the cut-off replica cannot have")
        old.kill()
        killed_at = time.monotonic()
        wait_until(lambda: ready_status(http_port) != 200, timeout_s=10, what="/ready to say not ready")
        new_port = cluster.wait_promoted(old.port)
        promoted_at = time.monotonic()
        old.start("--replicaof", "127.0.0.1", str(new_port))
        new = cluster.node_on(new_port)
        wait_replica_online(new)

        store = new.client()
        settled = settle_after_promotion(producer, store, records, runtime.log, promoted_at)
        losses, settled_after_s, log = settled.losses, settled.settled_after_s, settled.log
        report = (f"durability={durability}: {losses.describe()}; failover {promoted_at - killed_at:.1f}s, "
                  f"settled {settled_after_s:.1f}s after it; producer retries {dict(producer.failures)}")
        print(report)

        assert not losses.never_ran, f"{len(losses.never_ran)} job(s) completed without a recorded run: {report}"
        assert "cannot reach Redis" in log and "reaches Redis again" in log, "the pools did not report the gap"
        wait_until(lambda: ready_status(http_port) == 200, timeout_s=10, what="/ready after the failover")
        if durability == "replicated":
            assert losses.enqueues_lost == 0, report
            assert losses.completions_lost == 0, report
    finally:
        producer.stop.set()
        if runtime is not None:
            runtime.stop()
            print(f"--- ojs-run.log\n{runtime.log()[-20000:]}")
        cluster.stop()
        records.close()
