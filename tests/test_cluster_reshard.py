"""A reshard under load: the namespace's slot moves to another primary of a real Redis Cluster
while a producer enqueues and two pools drain, and nothing is lost or run twice.

The slot is moved by the documented protocol (tests/fixtures/redis_cluster.py: IMPORTING,
MIGRATING, MIGRATE in batches, SETSLOT NODE), its keys a batch at a time. While its keys are split
between the two nodes every transition is refused before it writes (the slot guard, or ``ASK``
for its declared keys: runtime/broker/cluster.py), so the runtime waits, and once the slot is
on its new node (``MOVED``) it carries on there, loading its library on the first call.

Between batches the test waits for the runtime to have been refused once more on the source node
(its error counters grow): an event, which proves the runtime kept trying while the slot was
half moved. Every run of the handler is recorded by job id and claim (tests/fixtures/chaos_handlers.py).

Asserted: every enqueue the producer was answered for exists and completed, every job in the
namespace ran exactly once (one claim, one run: nothing was killed, so no run may repeat),
nothing is left active or waiting, the store is consistent, and the old node holds none of it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from runtime import Client, Draft
from runtime.broker.keys import Keys
from runtime.broker.scripts import CLUSTER_LIBRARY_CODE, function_name
from runtime.broker.wire import Address, CommandNotSent, Wire
from runtime.config import Settings
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conftest import skip_or_fail
from tests.fixtures.procs import Runtime, free_port, integrity_problems, wait_until
from tests.fixtures.redis_cluster import ClusterNode, LocalCluster
from tests.test_chaos import ended_count, read_runs

pytestmark = pytest.mark.slow

KEYS = Keys()
BEFORE_MOVE = 600  # jobs enqueued (and a share of them run) before the slot starts moving
AFTER_MOVE = 400  # jobs enqueued after the move, so the new owner carries load too
BACKLOG = 300  # the producer waits while this many jobs are enqueued and not yet run
BATCH = 10
WORK_S = 0.005
SETTLE_S = 60.0


class Producer(threading.Thread):
    """Enqueues batches of no-op jobs until stopped, keeping at most BACKLOG waiting; keeps the
    ids it was answered for, and counts the calls that failed (their jobs may or may not exist:
    the check counts every job that exists)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[str] = []
        self.failures: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as err:  # reported by the test
            self.error = err

    async def _produce(self) -> None:
        async with Client(self.url) as client:
            while not self.stopping.is_set():
                if len(self.acknowledged) > BACKLOG:
                    # At most BACKLOG waiting: wait for the job BACKLOG places back to end (the
                    # result watch blocks on the event stream). While the slot moves that wait
                    # is refused too, and the loop goes on as the enqueues do.
                    try:
                        await client.job(self.acknowledged[-BACKLOG]).result(timeout=SETTLE_S)
                    except (redis.RedisError, TimeoutError) as err:
                        self.failures[f"wait: {type(err).__name__}"] += 1
                drafts = [Draft(type="chaos.job", args=[WORK_S]) for _ in range(BATCH)]
                try:
                    self.acknowledged += [i for i in await client.enqueue_many(drafts) if i is not None]
                except redis.RedisError as err:
                    self.failures[type(err).__name__] += 1

    def wait_for(self, count: int, what: str) -> None:
        wait_until(lambda: self.error is not None or len(self.acknowledged) >= count, timeout_s=60, what=what)
        assert self.error is None, f"the producer failed: {self.error!r}"


def refusals(node: ClusterNode) -> int:
    """The commands `node` refused so far (redirects, and scripts stopped by their guard)."""
    return sum(refusals_by_kind(node).values())


def refusals_by_kind(node: ClusterNode) -> dict[str, int]:
    stats = node.client().info("errorstats")
    return {name.removeprefix("errorstat_"): int(entry["count"]) for name, entry in stats.items()}


@pytest.fixture
def cluster(tmp_path: Path) -> LocalCluster:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    with LocalCluster(tmp_path / "cluster") as running:
        yield running  # type: ignore[misc]


def test_a_reshard_under_load_loses_nothing_and_runs_nothing_twice(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    slot = cluster.slot_of(KEYS.prefix)
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    monkeypatch.setenv("CHAOS_RECORD_DIR", str(record_dir))
    runtime = Runtime(cluster.seed_url, "tests.fixtures.chaos_handlers", "--processes", "2", "--concurrency", "10",
                      "--http", f"127.0.0.1:{free_port()}", log_path=tmp_path / "ojs-run.log")
    producer = Producer(cluster.seed_url)
    try:
        runtime.wait_ready(2)
        producer.start()
        producer.wait_for(BEFORE_MOVE, "the jobs before the move")
        wait_until(lambda: ended_count(record_dir) >= BEFORE_MOVE // 2, timeout_s=60, what="runs before the move")

        # When: the slot moves, a batch of keys at a time, the runtime refused between batches
        seen = [refusals(source)]

        def after_a_refusal() -> None:
            wait_until(lambda: refusals(source) > seen[-1], timeout_s=30, what="the runtime to try the half-moved slot")
            seen.append(refusals(source))

        began = time.time()
        moved = cluster.move_slot(slot, target, batch=25, between_batches=after_a_refusal)
        move_s = time.time() - began
        at_move_end = len(producer.acknowledged)
        producer.wait_for(at_move_end + AFTER_MOVE, "the jobs after the move")
        producer.stopping.set()
        producer.join(timeout=30)
        assert producer.error is None, f"the producer failed: {producer.error!r}"

        # Then: everything completes on the new owner, each job exactly once
        direct = target.raw_client()
        job_keys = [k for k in direct.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000_000)
                    if k.startswith(KEYS.job("").encode())]
        job_ids = [k.decode().removeprefix(KEYS.job("")) for k in job_keys]

        def all_completed() -> bool:
            pipe = direct.pipeline(transaction=False)
            for key in job_keys:
                pipe.hget(key, "state")
            return all(state == b"completed" for state in pipe.execute())

        wait_until(all_completed, timeout_s=SETTLE_S, what="every job to complete")
        runs = read_runs(record_dir)
        per_job = Counter(run.job_id for run in runs.values())
        report = (f"{len(job_ids)} jobs, {len(runs)} runs, {moved} keys moved in {move_s:.1f} s, "
                  f"{len(seen) - 1} refusals waited for, the old owner's refusals {refusals_by_kind(source)}, "
                  f"producer failures {dict(producer.failures)}")
        print(report)
        assert moved > BEFORE_MOVE // 2, report  # the move carried the load's keys
        assert set(producer.acknowledged) <= set(job_ids), f"answered enqueues lost: {report}"
        assert set(per_job) == set(job_ids), f"jobs that never ran, or runs of no job: {report}"
        repeated = {job_id: n for job_id, n in per_job.items() if n > 1}
        assert not repeated, f"jobs run more than once: {list(repeated.items())[:5]}; {report}"
        assert all(run.ended is not None for run in runs.values()), report
        runtime.stop()
        assert direct.zcard(KEYS.active) == 0, report
        assert direct.zcard(KEYS.available("default")) == 0, report
        assert integrity_problems(cluster.node_url(target)) == [], report
        assert source.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0, report
        assert "Traceback" not in runtime.log(), runtime.log()[-3000:]
    finally:
        producer.stopping.set()
        runtime.stop()


def test_no_transition_runs_while_its_slot_is_being_moved_and_all_resume_after(cluster: LocalCluster) -> None:
    """The slot marked MIGRATING with every key still on its node: a transition whose declared
    keys all exist is stopped by its slot guard, one that declares the (never existing) prefix is
    sent back with TRYAGAIN or ASK; either way nothing runs, and the caller gets CommandNotSent
    once its deadline is spent. When the move is called off, the same calls go through."""
    slot = cluster.slot_of(KEYS.prefix)
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    direct = source.raw_client()
    direct.function_load(CLUSTER_LIBRARY_CODE, replace=True)
    settings = Settings(redis_url=cluster.seed_url, redis_command_timeout_ms=400)

    async def enqueue_one() -> str | None:
        async with Client(cluster.seed_url, settings=settings) as client:
            return await client.enqueue("chaos.job", [0])

    assert asyncio.run(enqueue_one())
    direct.hset(KEYS.reaper, mapping={"last_step_ms": 1, "resume_at_ms": 1})
    before = {key: direct.dump(key) for key in direct.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)}

    async def reaper_watch() -> object:
        address = Address.from_url(cluster.seed_url)
        assert address is not None
        wire = Wire.of(address.with_timeout(0.4))
        try:
            return await wire.execute("FCALL", function_name("reaper_watch", cluster=True), 1, KEYS.reaper, 1000, 1000)
        finally:
            await wire.close()

    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    try:
        with pytest.raises(CommandNotSent, match="ojs slot guard"):
            asyncio.run(reaper_watch())  # declared key present: the guard stops it
        with pytest.raises(CommandNotSent):
            asyncio.run(enqueue_one())  # declares the prefix: refused before it starts
        after = {key: direct.dump(key) for key in direct.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)}
        assert after == before, "a transition wrote while its slot was being moved"
    finally:
        for node in (source, target):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert asyncio.run(reaper_watch())
    assert asyncio.run(enqueue_one())
