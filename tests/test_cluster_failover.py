"""Failover under load on a Redis Cluster: three primaries with a replica each on loopback,
`ojs-run` and a producer on a ``redis+cluster://`` URL naming every node, and the primary that
owns the namespace's slot SIGKILLed half-way. The cluster promotes its replica; the runtime finds
it through ``MOVED`` (runtime/broker/cluster.py). The killed node comes back (what its service
manager would do) and rejoins as the new primary's replica, so that replicated writes can be
confirmed again. The same test as tests/test_sentinel_failover.py, counted the same way
(tests/fixtures/failover_load.py): enqueues lost, completions lost, duplicates.

Replication on loopback is so quick that a kill at a random moment seldom catches a write the
replica lacks, so the replica lags on purpose first. It is stopped (SIGSTOP), which alone is not
enough: what the primary sends it waits in the socket buffers, several megabytes of them, and
reaches it once it runs again. So the primary is also told to drop a replica whose output it
cannot send (a replica output buffer limit of one byte), and drops it at its next writes: from
then on, an event seen in its INFO, nothing it writes can reach the replica. It runs at least
`LAG_CALLS` more script calls (writes the replica cannot have), then it is killed and the
replica resumed, so the cluster can promote it. Everything the primary answered in that window is
what asynchronous replication loses.

With ``OJS_DURABILITY=replicated`` both losses must be 0; with the default (``primary``) the test
reports them (``-s``). In both, everything must settle within seconds of the promotion: every job
the new primary has completes, nothing is left active or waiting, its store is consistent, the
pools say they lost Redis and found it again, and ``/ready`` said "not ready" during the gap and
"ready" after it.

A primary that hangs instead (SIGSTOP) still takes connections; the last test shows that the
runtime's connections leave it for the promoted replica all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis

from runtime import Client
from runtime.broker import clients
from runtime.broker.keys import Keys
from runtime.config import Settings
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conftest import POOL_HANDLERS, skip_or_fail
from tests.fixtures.failover_load import (
    Producer,
    completed_runs,
    ready_status,
    script_calls,
    settle_after_promotion,
)
from tests.fixtures.procs import Runtime, free_port, integrity_problems, wait_until
from tests.fixtures.redis_cluster import ClusterNode, LocalCluster

pytestmark = pytest.mark.slow

KEYS = Keys()
PROCESSES, CONCURRENCY = 2, 8
BEFORE_KILL = 300  # completions before the replica is cut off and then the primary killed
LAG_CALLS = 60  # script calls the primary runs once its replica is cut off
PROMOTION_BOUND_S = 30.0  # a failure is noticed after 2 node timeouts at most, then one election
HUNG_TIMEOUT_MS = 1000  # the command deadline while a primary hangs
HUNG_BOUND_S = 15.0  # after the promotion: a few command deadlines, whatever the hung node does


def replica_of(cluster: LocalCluster, primary: ClusterNode) -> ClusterNode:
    """The replica `primary` has (one each in this cluster)."""
    for *_, primary_id, replica_ids in cluster.slot_map():
        if primary_id == primary.node_id and replica_ids:
            return cluster.node_by_id(next(iter(replica_ids)))
    raise LookupError(f"{primary.name} has no replica")


def connected_replicas(node: ClusterNode) -> int:
    return int(node.client().info("replication")["connected_slaves"])


def cut_off(primary: ClusterNode, replica: ClusterNode) -> None:
    """From now on nothing `primary` writes reaches `replica` (see the module text)."""
    replica.pause()
    primary.client().config_set("client-output-buffer-limit", "replica 1 1 0")
    wait_until(lambda: connected_replicas(primary) == 0, timeout_s=10,
               what=f"{primary.name} to drop its stopped replica")


def replication_offset(node: ClusterNode) -> int:
    """How far `node`'s replication stream has gone (bytes)."""
    return int(node.client().info("replication")["master_repl_offset"])


def promoted_at_offset(node: ClusterNode) -> int:
    """Where the stream of `node`'s old primary ended for `node` when it was promoted: its
    history up to there is the old primary's (``second_repl_offset`` is the first byte after)."""
    return int(node.client().info("replication")["second_repl_offset"]) - 1


def wait_promoted(replica: ClusterNode, slot: int) -> None:
    """Until `replica` is a primary and the cluster says it owns `slot`."""
    def promoted() -> bool:  # asked of the replica itself: the old primary may hang
        try:
            ranges = replica.client().execute_command("CLUSTER SLOTS")
            owners = [owner[2] for first, last, owner, *_ in ranges if first <= slot <= last]
            return replica.role() == "master" and owners == [replica.node_id]
        except redis.RedisError:
            return False
    wait_until(promoted, timeout_s=PROMOTION_BOUND_S, what=f"{replica.name} promoted")


def replicates(node: ClusterNode, primary: ClusterNode) -> bool:
    info = node.client().info("replication")
    return (info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.announced_port
            and info.get("master_link_status") == "up")


@pytest.mark.parametrize("durability", ["replicated", "primary"])
def test_cluster_failover_under_load(durability: str, tmp_path: Path, redis_url: str) -> None:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    cluster = LocalCluster(tmp_path / "cluster", replicas=True)
    records = redis.Redis.from_url(redis_url)
    http_port = free_port()
    runtime = None
    producer = Producer(cluster.seed_url, durability)
    try:
        cluster.start()
        slot = cluster.slot_of(KEYS.prefix)
        old = cluster.node_for_slot(slot)
        new = replica_of(cluster, old)
        runtime = Runtime(
            cluster.seed_url, POOL_HANDLERS, "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY),
            "--http", f"127.0.0.1:{http_port}", "--heartbeat-interval", "1",
            log_path=tmp_path / "ojs-run.log",
            extra_env={"POOL_TEST_REDIS_URL": redis_url, "OJS_DURABILITY": durability},
        )
        runtime.wait_ready(PROCESSES)
        wait_until(lambda: ready_status(http_port) == 200, timeout_s=20, what="/ready before the failover")
        producer.start()
        wait_until(lambda: sum(completed_runs(records).values()) >= BEFORE_KILL, timeout_s=60,
                   what=f"{BEFORE_KILL} completions before the kill")

        # When: the replica is cut off, the primary writes on, and is killed
        cut_at = time.monotonic()
        cut_off(old, new)
        calls_before = script_calls(old.client())
        wait_until(lambda: script_calls(old.client()) >= calls_before + LAG_CALLS, timeout_s=10,
                   what="writes the cut-off replica cannot have")
        script_calls_at_kill = script_calls(old.client())
        offset_at_kill = replication_offset(old)
        cluster.kill(old)
        new.resume()
        killed_at = time.monotonic()
        lag_calls = script_calls_at_kill - calls_before
        wait_until(lambda: ready_status(http_port) != 200, timeout_s=10, what="/ready to say not ready")
        wait_promoted(new, slot)
        promoted_at = time.monotonic()
        missing = offset_at_kill - promoted_at_offset(new)
        assert missing > 0, f"{new.name} was promoted with every write of {old.name}: nothing lagged"
        cluster.restart(old)
        assert replicates(old, new), f"{old.name} came back, but not as {new.name}'s replica"

        store = new.client()
        settled = settle_after_promotion(producer, store, records, runtime.log, promoted_at)
        losses, settled_after_s, log = settled.losses, settled.settled_after_s, settled.log
        report = (f"durability={durability}: {losses.describe()}; replica cut off for {killed_at - cut_at:.1f}s "
                  f"({lag_calls} script calls after its drop, {missing} bytes of replication stream it never got); failover {promoted_at - killed_at:.1f}s, "
                  f"settled {settled_after_s:.1f}s after it; producer retries {dict(producer.failures)}")
        print(report)

        assert not losses.never_ran, f"{len(losses.never_ran)} job(s) completed without a recorded run: {report}"
        assert "cannot reach Redis" in log and "reaches Redis again" in log, "the pools did not report the gap"
        wait_until(lambda: ready_status(http_port) == 200, timeout_s=10, what="/ready after the failover")
        assert integrity_problems(cluster.node_url(new)) == [], report
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


def test_a_hung_primary_is_left_for_the_replica_promoted_in_its_place(tmp_path: Path) -> None:
    """The slot's primary hangs (SIGSTOP) instead of dying: its port still accepts connections
    and nothing on them is answered, so connecting to it never fails. Once the cluster has
    promoted its replica, both kinds of connection (the lean one, and redis-py's) must go there
    within a few command deadlines, though the old primary never answers again."""
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    with LocalCluster(tmp_path / "cluster", replicas=True) as cluster:
        slot = cluster.slot_of(KEYS.prefix)
        old = cluster.node_for_slot(slot)
        new = replica_of(cluster, old)
        settings = Settings(redis_url=cluster.seed_url, redis_command_timeout_ms=HUNG_TIMEOUT_MS)
        failures: list[str] = []

        async def answered(call: Callable[[], Awaitable[object]]) -> bool:
            try:
                await call()
            except redis.RedisError as err:
                failures.append(f"{type(err).__name__}: {err}")
                return False
            return True

        async def scenario() -> tuple[bool, bool]:
            async with Client(cluster.seed_url, settings=settings) as client:
                reads = clients.redis_client(settings)
                try:
                    # Given: both connections know the slot's primary
                    job_id = await client.enqueue("count.job", [0])
                    assert await reads.hget(KEYS.job(job_id), "state")
                    # When: it hangs, and the cluster promotes its replica
                    old.pause()
                    await asyncio.to_thread(wait_promoted, new, slot)
                    # Then: both reach the new primary
                    deadline = time.monotonic() + HUNG_BOUND_S
                    enqueued = read = False
                    while time.monotonic() < deadline and not (enqueued and read):
                        enqueued = enqueued or await answered(lambda: client.enqueue("count.job", [0]))
                        read = read or await answered(lambda: reads.hget(KEYS.job(job_id), "state"))
                    return enqueued, read
                finally:
                    await reads.aclose()

        try:
            enqueued, read = asyncio.run(scenario())
        finally:
            old.resume()
        assert enqueued, f"no enqueue reached the promoted primary: {failures[-3:]}"
        assert read, f"no read reached the promoted primary: {failures[-3:]}"
