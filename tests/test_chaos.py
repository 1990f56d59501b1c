"""Bounded chaos: about 2,000 short jobs through a real `ojs-run` with two pools while, in turn, a
pool is SIGKILLed, Redis is killed right after an ack ran (its reply lost) and started again on its
AOF a few seconds later, and the link goes silent as a fetch is on its way (Redis runs it, the
reply never comes).

The runtime reaches Redis only through a fault proxy (tests/fixtures/tcp_proxy.py), in front of a
Redis process of the test's own (AOF, ``appendfsync always``: a write that was answered survives a
SIGKILL, so a lost job is the runtime's doing, never Redis'). Every run of the handler
(tests/fixtures/chaos_handlers.py) is recorded by job id and claim, with its start and end times,
in a file per pool process: records survive every fault.

Asserted: no job lost (every one completed, under a claim whose run was recorded), none stuck (no
job active or available, the store consistent), every extra run explained: a job runs again only
if an earlier run was cut short by the pool kill, or finished its handler just before the kill,
its ack unsent. An ack in flight at an outage must wait it out and land (the pool keeps sending it
while the claim may be valid, and a re-sent ack whose first send landed counts as done), so a
duplicate there is a defect. And everything settles within a few seconds of the last fault's end,
well under one lease. The figures are printed (``-s``) and attached to the assertions.

The faults are triggered on progress (so many runs ended since the last fault), never on a
timer; the only sleeps are the faults' own durations (Redis down, the link silent).

The same test runs twice, on a store of each kind (the same interface: `SingleRedis`,
`ClusterStore`): a single Redis, and a Redis Cluster of three primaries
(tests/fixtures/redis_cluster.py, AOF, no replicas) reached by its ``redis+cluster://`` URL. There
the node that owns the namespace's slot sits behind the proxy (it announces the proxy's port, so
the runtime reaches it only through the proxy) and is the one killed and restarted; the other
primaries keep serving their own slots (no full coverage required) and fail nothing over (no
replicas). The test's own view is a plain client on that node's real port, never faulted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from runtime import Client, Draft
from runtime.broker.keys import Keys
from runtime.broker.scripts import CLUSTER_LIBRARY_CODE, LIBRARY_CODE, function_name
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conftest import skip_or_fail
from tests.fixtures.broker_process import stop_process
from tests.fixtures.procs import Start, free_port, integrity_problems, run, wait_until
from tests.fixtures.redis_cluster import HOST, LocalCluster
from tests.fixtures.tcp_proxy import FaultProxy

pytestmark = pytest.mark.slow

KEYS = Keys()
JOBS = 2_000
WORK_S = 0.05  # each job's handler
PROCESSES, CONCURRENCY = 2, 10
LEASE_S = 30
SETTLE_BOUND_S = 15.0  # half a lease: a job that waited for its lease to lapse fails this
BLACKHOLE_S = 3.0
REDIS_DOWN_S = 3.0  # longer than acks used to be retried
RUNS_BETWEEN_FAULTS = 500  # runs that end before the first fault, and after each fault before the next
# An ack leaves a few milliseconds after its handler's end; on a busy machine it can take longer.
# A run that ended this long before a fault may still have had its ack in flight.
ACK_IN_FLIGHT_S = 2.0
REDIS_START_TIMEOUT_S = 15.0
CLUSTER_PRIMARIES = 3


class AofRedis:
    """One Redis process on a fixed port and data dir, AOF on, that the test kills and restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = find_server_binary()
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir()
        self.config = data_dir / "redis.conf"
        self.config.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {data_dir}\ndaemonize no\nsave \"\"\n"
            "appendonly yes\nappendfsync always\n"
            f"logfile {data_dir / 'redis.log'}\n"
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=2)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return bool(client.ping())  # LOADING (an error) until the AOF is replayed
            except redis.RedisError:
                return False

        try:
            wait_until(answers, timeout_s=REDIS_START_TIMEOUT_S, what="Redis to answer")
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        path = self.data_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    server = AofRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the store under test: what differs between a single Redis and a cluster -------------------


class SingleRedis:
    """One Redis (`AofRedis`): the test reads it directly, the runtime reaches it through a proxy."""

    restart_fault = "Redis restart"
    library = LIBRARY_CODE
    fetch = function_name("fetch").encode()
    ack = function_name("ack").encode()

    def __init__(self, server: AofRedis) -> None:
        self.server = server
        self.direct_url = server.url  # the test's view (and the integrity check's), never faulted
        self.enqueue_url = server.url  # where the jobs are enqueued from, by the runtime's client
        self.proxy = FaultProxy(server.url).start()
        self.runtime_url = self.proxy.url()

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        """Start it again on its AOF; returns once it serves."""
        self.server.start()

    def close(self) -> None:
        self.proxy.stop()

class ClusterStore:
    """A `LocalCluster` whose node owning the namespace's slot sits behind its proxy: the runtime
    gets the cluster's seed URL (every node at its announced port, the owner's being the proxy's),
    the test reads the owner on its real port (the namespace is one slot: every key is there)."""

    restart_fault = "owner node restart"
    library = CLUSTER_LIBRARY_CODE
    fetch = function_name("fetch", cluster=True).encode()
    ack = function_name("ack", cluster=True).encode()

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.owner = cluster.node_for_slot(cluster.slot_of(KEYS.prefix))
        assert self.owner.proxy is not None, f"{self.owner} owns the namespace's slot, yet is not behind a proxy"
        self.proxy = self.owner.proxy
        self.direct_url = f"redis://{HOST}:{self.owner.port}"
        # The owner's real port as the only seed: the commands run there, no redirect, no proxy.
        self.enqueue_url = f"redis+cluster://{HOST}:{self.owner.port}"
        self.runtime_url = cluster.seed_url

    def kill(self) -> None:
        self.cluster.kill(self.owner)

    def start(self) -> None:
        """Start the owner again on its AOF and nodes.conf; returns once it serves its slot. Not
        once the whole cluster has settled: the others clear their FAIL flag for it only seconds
        later, while the runtime, which talks to the owner alone, runs jobs again already."""
        self.cluster.restart(self.owner, settle=False)

    def close(self) -> None:
        pass  # the proxy is the cluster's: it stops with it

Store = SingleRedis | ClusterStore


@pytest.fixture
def single_redis(aof_redis: AofRedis) -> Iterator[SingleRedis]:
    store = SingleRedis(aof_redis)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[ClusterStore]:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    owner = LocalCluster.first_owner_index(LocalCluster.slot_of(KEYS.prefix), CLUSTER_PRIMARIES)
    # No replicas: nothing fails over while the owner is down. No full coverage: the other
    # primaries keep serving their own slots meanwhile (and send the owner's slot to the owner).
    cluster = LocalCluster(tmp_path / "cluster", primaries=CLUSTER_PRIMARIES, aof=True, proxied=[owner],
                           full_coverage=False)
    cluster.start()
    try:
        store = ClusterStore(cluster)
        assert store.owner is cluster.nodes[owner], (store.owner, owner)
        yield store
    finally:
        cluster.stop()
        print(cluster.logs())


# --- what the handler recorded ------------------------------------------------------------------


@dataclass
class Run:
    job_id: str
    claim: str
    attempt: int
    worker: str
    pid: int
    started: float
    ended: float | None = None


def read_runs(record_dir: Path) -> dict[str, Run]:
    """Every run by claim. A claim that starts twice is a defect of its own: it fails at once."""
    runs: dict[str, Run] = {}
    for path in record_dir.glob("runs-*.jsonl"):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line being written right now
            rec = json.loads(line)
            if rec["event"] == "start":
                if rec["claim"] in runs:
                    raise AssertionError(f"claim {rec['claim']} of job {rec['id']} started twice")
                runs[rec["claim"]] = Run(rec["id"], rec["claim"], rec["attempt"], rec["worker"], rec["pid"], rec["t"])
            else:
                runs[rec["claim"]].ended = rec["t"]
    return runs


def running_in(record_dir: Path, pid: int) -> int:
    """Runs the pool process `pid` has started and not ended."""
    path = record_dir / f"runs-{pid}.jsonl"
    if not path.exists():
        return 0
    text = path.read_bytes()
    return text.count(b'"event":"start"') - text.count(b'"event":"end"')


def ended_count(record_dir: Path) -> int:
    return sum(path.read_bytes().count(b'"event":"end"') for path in record_dir.glob("runs-*.jsonl"))


@dataclass
class Fault:
    name: str
    began: float
    ended: float
    pid: int = 0  # the pool killed
    settle_s: float = 0.0  # from its end until every job that was in flight at it had completed


@dataclass
class Figures:
    jobs: int
    runs: int = 0
    interrupted: int = 0  # runs cut by the kill before their handler ended (re-runs, not duplicates)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # job id -> why, per extra run
    unexplained: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    settle_s: float = 0.0  # from the last fault's end to the last completion

    def report(self) -> str:
        why: dict[str, int] = defaultdict(int)
        for reasons in self.duplicates.values():
            for reason in reasons:
                why[reason] += 1
        lines = [f"chaos: {self.jobs} jobs, {self.runs} runs, {self.interrupted} cut by the pool kill "
                 f"and run again, {len(self.duplicates)} duplicate(s) (a finished handler run again)"]
        lines += [f"  duplicate: {count} x {reason}" for reason, count in sorted(why.items())]
        lines += [f"  UNEXPLAINED: {u}" for u in self.unexplained[:10]]
        if len(self.unexplained) > 10:
            lines.append(f"  ... and {len(self.unexplained) - 10} more unexplained")
        lines += [f"  fault {f.name} at {_clock(f.began)}: {f.ended - f.began:.1f} s, the jobs in flight at it "
                  f"completed {f.settle_s:.1f} s after its end" for f in self.faults]
        lines.append(f"  last completion {self.settle_s:.1f} s after the last fault's end (lease {LEASE_S} s)")
        return "\n".join(lines)


def _clock(t: float) -> str:
    """Wall-clock time as the runtime's log lines show it."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


def classify(runs: dict[str, Run], completed_claim: dict[str, str], faults: list[Fault], figures: Figures) -> None:
    """Explain every run of a job besides the run that completed it."""
    kill = next(f for f in faults if f.name == "pool SIGKILL")
    outages = [f for f in faults if f is not kill]
    by_job: dict[str, list[Run]] = defaultdict(list)
    for r in runs.values():
        by_job[r.job_id].append(r)
    figures.runs = len(runs)
    for job_id, job_runs in by_job.items():
        final = completed_claim.get(job_id)
        for r in job_runs:
            if r.claim == final:
                if r.ended is None:
                    figures.unexplained.append(f"job {job_id} completed under claim {r.claim}, whose run never ended")
                continue
            if r.ended is None:
                if r.pid == kill.pid:
                    figures.interrupted += 1
                else:
                    figures.unexplained.append(f"job {job_id}: run {r.claim} (pid {r.pid}) cut short, not by the kill")
                continue
            # Its handler ended, yet the job ran again: only a kill of its pool before the ack
            # left explains that. An ack in flight at an outage is sent until it lands.
            if r.pid == kill.pid and kill.began - ACK_IN_FLIGHT_S <= r.ended <= kill.began:
                figures.duplicates.setdefault(job_id, []).append(
                    "its handler ended just before its pool was killed, the ack unsent")
                continue
            during = [o.name for o in outages if o.began - ACK_IN_FLIGHT_S <= r.ended <= o.ended]
            where = f"its ack was in flight at the {during[0]}, and never landed" if during else "outside every fault"
            figures.duplicates.setdefault(job_id, []).append(f"UNEXPLAINED: {where}")
            figures.unexplained.append(f"job {job_id}: run {r.claim} (pid {r.pid}, attempt {r.attempt}) ended "
                                       f"at {_clock(r.ended)} ({where}), yet the job ran again")


# --- the test -----------------------------------------------------------------------------------


def enqueue_all(url: str) -> list[str]:
    async def go() -> list[str]:
        ids: list[str] = []
        async with Client(url) as client:
            for first in range(0, JOBS, 500):
                drafts = [Draft(type="chaos.job", args=[WORK_S]) for _ in range(first, min(first + 500, JOBS))]
                ids += [i for i in await client.enqueue_many(drafts) if i is not None]
        return ids

    ids: list[str] = run(go())
    return ids


def completions(client: redis.Redis, job_ids: list[str]) -> list[tuple[str, str, int]]:
    """(state, claim, completed_at ms) of every job, read in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(KEYS.job(job_id), ["state", "claim", "completed_at"])
    out = []
    for state, claim, at in pipe.execute():
        out.append(((state or b"").decode(), (claim or b"").decode(), int(at or 0)))
    return out


def states_of(client: redis.Redis, job_ids: list[str]) -> dict[str, int]:
    """How many of the jobs are in each state."""
    count: dict[str, int] = defaultdict(int)
    for state, _claim, _at in completions(client, job_ids):
        count[state] += 1
    return dict(count)


def settled_after(client: redis.Redis, runs: dict[str, Run], fault: Fault) -> float:
    """How long after the fault's end the last job with a run around it completed."""
    around = sorted({r.job_id for r in runs.values()
                     if r.started <= fault.ended and (r.ended is None or r.ended >= fault.began - ACK_IN_FLIGHT_S)})
    last = max((at for _state, _claim, at in completions(client, around)), default=0)
    return max(0.0, last / 1000 - fault.ended)


def test_chaos_no_job_lost_stuck_or_repeated_without_cause(
    single_redis: SingleRedis, start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chaos(single_redis, start, tmp_path, monkeypatch)


def test_chaos_on_a_cluster_no_job_lost_stuck_or_repeated_without_cause(
    redis_cluster: ClusterStore, start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chaos(redis_cluster, start, tmp_path, monkeypatch)


def chaos(store: Store, start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(store.direct_url)  # direct: the test's view, never faulted by the proxy
    client.function_load(store.library, replace=True)
    proxy = store.proxy
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    monkeypatch.setenv("CHAOS_RECORD_DIR", str(record_dir))
    figures = Figures(jobs=JOBS)
    faults = figures.faults
    try:
        # Given: the jobs wait, and two pools and the scheduler serve them through the proxy
        job_ids = enqueue_all(store.enqueue_url)
        assert len(job_ids) == JOBS
        runtime = start("--redis", store.runtime_url, "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY),
                        "--lease", str(LEASE_S), "--http", f"127.0.0.1:{free_port()}",
                        module="tests.fixtures.chaos_handlers")
        runtime.wait_ready(PROCESSES)

        def after_more_runs(what: str) -> None:
            target = ended_count(record_dir) + RUNS_BETWEEN_FAULTS if faults else RUNS_BETWEEN_FAULTS
            try:
                wait_until(lambda: ended_count(record_dir) >= target, timeout_s=30, what=f"{target} runs before {what}")
            except AssertionError as stalled:
                raise AssertionError(f"{stalled}: {ended_count(record_dir)} ended; the jobs by state: "
                                     f"{states_of(client, job_ids)}\n{figures.report()}") from None
            assert ended_count(record_dir) < JOBS - CONCURRENCY, f"the load ended before {what}: make it longer"

        # When: (1) a pool is SIGKILLed mid-load; the supervisor replaces it
        after_more_runs("the pool kill")
        victim = runtime.pool_pids()[0]
        # Mid-load means with handlers running in that pool: its record shows runs not ended yet
        wait_until(lambda: running_in(record_dir, victim) > 0, timeout_s=10, what="a run in the pool to kill")
        began = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(runtime.pool_pids()) > PROCESSES, what="the killed pool to be replaced")
        runtime.wait_ready(PROCESSES + 1)
        faults.append(Fault("pool SIGKILL", began, time.time(), pid=victim))

        # (2) Redis is killed and started again on its AOF, same port and data, right after an
        # ack reached it and lost its reply (so at least one ack's outcome is surely unknown)
        after_more_runs(f"the {store.restart_fault}")
        proxy.drop_reply(store.ack)
        assert proxy.dropped.wait(10), "no ack went out"
        # That ack has run once this PING is answered: its bytes were waiting before the PING's,
        # Redis serves every ready socket in one turn and replies (after the fsync) at its end.
        client.ping()
        began = time.time()
        store.kill()
        time.sleep(REDIS_DOWN_S)  # the outage itself: how long Redis stays down is the fault
        store.start()
        faults.append(Fault(store.restart_fault, began, time.time()))

        # (3) the link goes silent (sockets kept, bytes swallowed) for a few seconds, as a fetch
        # is on its way: Redis runs it, its reply never comes (jobs claimed for no one)
        after_more_runs("the blackhole")
        proxy.drop_reply(store.fetch, close=False)
        assert proxy.dropped.wait(10), "no fetch went out"
        began = time.time()
        proxy.blackhole()
        time.sleep(BLACKHOLE_S)  # the fault itself: how long the link stays silent
        proxy.restore()
        faults.append(Fault("blackhole", began, time.time()))

        # Then: every job completes, and soon: not a lease later
        def all_completed() -> bool:
            return all(state == "completed" for state, _c, _a in completions(client, job_ids))

        try:
            wait_until(all_completed, timeout_s=SETTLE_BOUND_S + LEASE_S, what="every job to complete")
        except AssertionError:
            raise AssertionError(f"not every job completed: {states_of(client, job_ids)}\n{figures.report()}") from None
        final = completions(client, job_ids)
        runs = read_runs(record_dir)
        figures.settle_s = max(0.0, max(at for _s, _c, at in final) / 1000 - faults[-1].ended)
        for fault in faults:
            fault.settle_s = settled_after(client, runs, fault)
        classify(runs, {job_id: claim for job_id, (_s, claim, _a) in zip(job_ids, final, strict=True)}, faults, figures)
        report = figures.report()
        print(report)

        # no job lost: each completed under a claim whose run the handler recorded, start to end
        unrun = [job_id for job_id, (_s, claim, _a) in zip(job_ids, final, strict=True) if claim not in runs]
        assert not unrun, f"{len(unrun)} job(s) completed with no recorded run, e.g. {unrun[:3]}\n{report}"
        # none stuck: nothing active or waiting, no claim held, the store consistent
        runtime.stop()
        assert client.zcard(KEYS.active) == 0, report
        assert client.zcard(KEYS.available("default")) == 0, report
        assert integrity_problems(store.direct_url) == [], report
        # the kill cut runs short (it landed mid-load), and every extra run has its cause
        assert figures.interrupted > 0, f"the pool kill interrupted no run: it did not land mid-load\n{report}"
        assert not figures.unexplained, report
        # and no run lost its claim: each outcome landed, re-sent ones counted as done
        assert "not settled by this worker" not in runtime.log(), report
        # every fault settled within a few seconds of its end, well under one lease
        assert figures.settle_s < SETTLE_BOUND_S, report
        assert all(f.settle_s < SETTLE_BOUND_S for f in faults), report
    finally:
        client.close()
