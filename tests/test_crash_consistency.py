"""Acceptance: a crash in the middle of a load never leaves the job store inconsistent.

Why it can hold: every state transition is one Lua script, which Redis runs atomically and
appends to its AOF as one unit; a restart replays a prefix of whole transitions. Checked end to
end, with no test-only wiring:

* The server runs as deployed, ``python -m runtime --port P --data-dir D``, with its own embedded
  Redis and AOF in ``D``. We find that Redis among the server's descendants (it runs under its
  keeper) and reach it on its socket in ``D`` instead of handing the server a Redis of ours, so
  the crash and recovery paths are the real ones: the keeper stopping Redis once its owner is
  gone, and the AOF replay when the server restarts.
* Six threads drive a mixed HTTP load: single and batch enqueues (delayed, expiring, short leases
  and execution timeouts, various retry policies), fetches with ``count``, acks, nacks (retry,
  requeue, dead letter), cancels, heartbeats. The kill waits on an event ("N operations done"),
  never on a sleep, so it always lands mid-load.
* ``test_crash_server_sigkill``: SIGKILL the server. Its Redis gets SIGTERM from its keeper
  (nothing else uses it), must exit by itself, and flushes its AOF on the way: so besides
  consistency, every job whose enqueue was answered 201 must survive.
* ``test_crash_redis_sigkill``: SIGKILL the Redis process itself (its keeper starts it again on
  the cut AOF), then the server. The AOF is cut
  wherever the kill lands (fsync every second), so recent acknowledged writes may be lost; only
  what Redis promises is asserted: the jobs created before a completed AOF rewrite survive.
* After each crash a new server starts on the same data dir; it must work (enqueue, fetch, ack)
  and catch up (its scheduler handles every overdue lease, retry and expiry). It is then frozen
  with SIGSTOP so nothing writes while ``check_integrity`` SCANs (the check is not a snapshot):
  the store must show no problem and no job that nobody enqueued.

Each test takes about five seconds; every wait has a deadline, so a hang fails instead of blocking.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import redis.asyncio

from runtime.broker.integrity import check_integrity
from runtime.broker.keys import DEFAULT_PREFIX, Keys
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from runtime.ids import uuid7
from tests.fixtures.procs import is_redis_server

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUES = ["crash-a", "crash-b", "crash-c"]
THREADS = 6
KILL_AFTER_OPS = 1_000
START_TIMEOUT_S = 15.0
LOAD_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 5.0
CATCH_UP_TIMEOUT_S = 10.0


# --- the server under test --------------------------------------------------------------------


@dataclass
class Server:
    """One ``python -m runtime`` process and the embedded Redis it started."""

    proc: subprocess.Popen[bytes]
    base_url: str
    redis_pid: int
    redis_url: str


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[Path], Server]]:
    """``start_server(data_dir)``; every server (and its Redis) is stopped after the test."""
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        pytest.skip(str(err))
    started: list[Server] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("OJS_") and k != "REDIS_URL"}
    # A restart after a crash is an outage to the new server's reaper: lease expiry waits a grace
    # for live workers. The load's workers are gone; a short grace keeps the catch-up in time.
    env["OJS_REAPER_OUTAGE_GRACE_MS"] = "1000"

    def start(data_dir: Path) -> Server:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        log_path = tmp_path / f"server-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime", "--port", str(port), "--data-dir", str(data_dir),
                 "--log-level", "warning"],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base_url, log_path)
        server = Server(proc, base_url, _embedded_redis_of(proc.pid), f"unix://{data_dir / 'redis.sock'}?db=0")
        started.append(server)
        return server

    yield start
    for server in started:
        _stop(server)


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    """Startup has no event to wait on: poll /health with a deadline (as EmbeddedRedis does)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/ojs/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"server not healthy within {START_TIMEOUT_S}s:\n{log_path.read_text()}")


def _embedded_redis_of(server_pid: int) -> int:
    """The server's Redis process (under its keeper; Redis rewrites its own cmdline, not its exe).
    It listens on the Unix socket of the data dir only."""
    for child in psutil.Process(server_pid).children(recursive=True):
        if is_redis_server(child):
            return child.pid
    pytest.fail("the server has no embedded Redis")


def _wait_gone(pid: int) -> bool:
    """True once ``pid`` has exited. A zombie counts: its parent (the server) reaps it, not us."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _stop(server: Server) -> None:
    """Graceful when possible (SIGTERM lets the server SHUTDOWN its Redis), else SIGKILL."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
        server.proc.terminate()
        try:
            server.proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    if not _wait_gone(server.redis_pid):
        os.kill(server.redis_pid, signal.SIGKILL)
        _wait_gone(server.redis_pid)


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """Shared by the load threads: progress, what was attempted and created, what went wrong."""

    base_url: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: int = 0
    reached: threading.Event = field(default_factory=threading.Event)  # KILL_AFTER_OPS done
    crashed: threading.Event = field(default_factory=threading.Event)  # set just before a kill
    stop: threading.Event = field(default_factory=threading.Event)
    attempted: set[str] = field(default_factory=set)  # ids sent in an enqueue
    created: set[str] = field(default_factory=set)  # ids answered 201
    errors: list[str] = field(default_factory=list)  # unexpected answers before the crash

    def call(self, client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
        response = client.request(method, path, json=body)
        with self.lock:
            self.ops += 1
            if self.ops >= KILL_AFTER_OPS:
                self.reached.set()
            if response.status_code >= 500 and not self.crashed.is_set():
                self.errors.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response


def _job_body(rng: random.Random, job_id: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "queue": rng.choice(QUEUES),
        "priority": rng.randint(-3, 3),
        "retry": {"max_attempts": rng.randint(1, 3), "initial_interval": "PT0.05S",
                  "jitter": rng.random() < 0.5, "on_exhaustion": rng.choice(["discard", "dead_letter"])},
    }
    if rng.random() < 0.15:
        options["scheduled_at"] = "+PT0.2S"
    if rng.random() < 0.2:
        options["expires_at"] = "+PT0.4S"
    if rng.random() < 0.15:
        options["timeout_ms"] = 150
    if rng.random() < 0.15:
        options["visibility_timeout_ms"] = 200
    return {"id": job_id, "type": "crash.test", "args": [rng.randint(0, 9)], "options": options}


def _enqueue(load: Load, client: httpx.Client, rng: random.Random) -> None:
    bodies = [_job_body(rng, uuid7()) for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 5))]
    with load.lock:
        load.attempted.update(b["id"] for b in bodies)
    if len(bodies) == 1:
        response = load.call(client, "POST", "/ojs/v1/jobs", bodies[0])
    else:
        response = load.call(client, "POST", "/ojs/v1/jobs/batch", {"jobs": bodies})
    if response.status_code == 201:
        with load.lock:
            load.created.update(b["id"] for b in bodies)


OUTCOMES = (("ack", 0.45), ("retry", 0.20), ("requeue", 0.07), ("dead_letter", 0.05), ("cancel", 0.05),
            ("hold", 0.18))
HANDS_BACK = frozenset({"retry", "requeue", "hold"})


_NACK = "/ojs/v1/workers/nack"
SETTLE: dict[str, tuple[str, dict[str, Any]]] = {
    "ack": ("/ojs/v1/workers/ack", {"result": {"ok": True}}),
    "retry": (_NACK, {"error": {"message": "boom", "type": "CrashTest"}}),
    "requeue": (_NACK, {"requeue": True, "error": {"message": "again"}}),
    "dead_letter": (_NACK, {"error": {"message": "poison", "code": "DEAD_LETTER"}}),
}


def _work(load: Load, client: httpx.Client, rng: random.Random, worker_id: str, held: set[str]) -> None:
    queues = rng.sample(QUEUES, k=len(QUEUES))
    response = load.call(client, "POST", "/ojs/v1/workers/fetch",
                         {"queues": queues, "count": rng.randint(1, 4), "worker_id": worker_id})
    for job in response.json().get("jobs", []) if response.status_code == 200 else []:
        (outcome,) = rng.choices([o for o, _ in OUTCOMES], weights=[w for _, w in OUTCOMES])
        if outcome == "hold":
            held.add(job["id"])  # left running: a heartbeat, a lease expiry, or the crash ends it
        elif outcome == "cancel":
            load.call(client, "DELETE", f"/ojs/v1/jobs/{job['id']}")
        else:
            path, extra = SETTLE[outcome]
            claim = {"job_id": job["id"], "worker_id": worker_id, "attempt": job["attempt"]}
            load.call(client, "POST", path, {**claim, **extra})


def _drive(load: Load, seed: int) -> None:
    rng = random.Random(seed)
    worker_id = f"crash-w{seed}"
    held: set[str] = set()
    with httpx.Client(base_url=load.base_url, timeout=5.0) as client:
        while not load.stop.is_set():
            try:
                roll = rng.random()
                if roll < 0.4:
                    _enqueue(load, client, rng)
                elif roll < 0.8:
                    _work(load, client, rng, worker_id, held)
                elif roll < 0.9 and load.attempted:
                    with load.lock:
                        victim = rng.choice(sorted(load.attempted))
                    load.call(client, "DELETE", f"/ojs/v1/jobs/{victim}")
                else:
                    load.call(client, "POST", "/ojs/v1/workers/heartbeat",
                              {"worker_id": worker_id, "active_jobs": sorted(held)})
            except (httpx.TransportError, ValueError) as err:  # ValueError: a cut-off JSON body
                if not load.crashed.is_set():
                    with load.lock:
                        load.errors.append(f"thread {seed}: {err!r}")
                return


def _run_until_crash(base_url: str, kill: Callable[[], None], before_kill: Callable[[Load], None]) -> Load:
    """Start the load; once KILL_AFTER_OPS operations are done, ``before_kill`` then ``kill``."""
    load = Load(base_url)
    threads = [threading.Thread(target=_drive, args=(load, n), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        assert load.reached.wait(LOAD_TIMEOUT_S), f"load stalled at {load.ops} ops: {load.errors}"
        before_kill(load)
        load.crashed.set()  # from here on, failed requests are the crash, not a bug
        kill()
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=EXIT_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "load threads did not stop"
    assert load.errors == [], "unexpected failures before the crash"
    return load


# --- after the restart --------------------------------------------------------------------------


def _round_trip(base_url: str) -> str:
    """The restarted server works on the recovered store: enqueue, fetch, ack."""
    job_id = uuid7()
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        assert client.post("/ojs/v1/jobs", json={"id": job_id, "type": "after.crash", "args": [],
                                                 "options": {"queue": "after-crash"}}).status_code == 201
        fetched = client.post("/ojs/v1/workers/fetch", json={"queues": ["after-crash"], "worker_id": "w"})
        assert [j["id"] for j in fetched.json()["jobs"]] == [job_id]
        ack = client.post("/ojs/v1/workers/ack", json={"job_id": job_id, "worker_id": "w", "attempt": 1})
        assert ack.status_code == 200
    return job_id


def _wait_caught_up(client: redis.Redis, keys: Keys) -> None:
    """Wait until the restarted server's scheduler has handled every overdue entry."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        # 500 ms of slack: an entry becomes due continuously; the scheduler steps every 100 ms.
        cutoff = int(time.time() * 1000) - 500
        overdue = {key: client.zcount(key, "-inf", cutoff) for key in (keys.delayed, keys.active, keys.expiring)}
        if not any(overdue.values()):
            return
        assert time.monotonic() < deadline, f"scheduler did not catch up: {overdue}"
        time.sleep(0.05)


def _assert_recovered(server: Server, load: Load, must_survive: set[str]) -> None:
    keys = Keys(DEFAULT_PREFIX)
    extra = _round_trip(server.base_url)
    client = redis.Redis.from_url(server.redis_url)
    try:
        _wait_caught_up(client, keys)
        server.proc.send_signal(signal.SIGSTOP)  # the only writer is frozen while we read
        stored = {k.decode().removeprefix(keys.job("")) for k in client.scan_iter(keys.job("*"), count=1000)}
        problems = asyncio.run(_integrity(server.redis_url, keys))
    finally:
        client.close()
    assert must_survive, "nothing to recover: the load created no job before the crash"
    assert problems == [], "store inconsistent after the crash:\n" + "\n".join(problems)
    assert must_survive <= stored, f"{len(must_survive - stored)} acknowledged jobs lost"
    assert stored - {extra} <= load.attempted, "jobs nobody enqueued"


async def _integrity(url: str, keys: Keys) -> list[str]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return await check_integrity(client, keys)
    finally:
        await client.aclose()


# --- the tests ----------------------------------------------------------------------------------


def test_crash_server_sigkill(start_server: Callable[[Path], Server], tmp_path: Path) -> None:
    # Given: a server under load
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    created: set[str] = set()

    def snapshot(load: Load) -> None:
        with load.lock:
            created.update(load.created)

    # When: the server is SIGKILLed mid-load
    load = _run_until_crash(server.base_url, server.proc.kill, snapshot)
    server.proc.wait(timeout=EXIT_TIMEOUT_S)
    # Then: its Redis follows it (its keeper stops it), and a new server recovers the store
    assert _wait_gone(server.redis_pid), "the embedded Redis outlived its SIGKILLed server"
    _assert_recovered(start_server(data_dir), load, must_survive=created)


def _rewrite_aof(client: redis.Redis) -> None:
    """A durability point: a completed BGREWRITEAOF holds (fsynced) every write before its fork.
    (WAITAOF would be the direct way, but Valkey does not implement it.)"""
    before = int(client.info("persistence")["aof_rewrites"])
    client.bgrewriteaof()
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while True:
        info = client.info("persistence")
        if int(info["aof_rewrites"]) > before and not info["aof_rewrite_in_progress"]:
            assert info["aof_last_bgrewrite_status"] == "ok"
            return
        assert time.monotonic() < deadline, "AOF rewrite did not finish"
        time.sleep(0.01)


def test_crash_redis_sigkill(start_server: Callable[[Path], Server], tmp_path: Path) -> None:
    # Given: a server under load, and our own connection to its Redis
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    durable: set[str] = set()

    def make_durable_point(load: Load) -> None:
        with load.lock:
            durable.update(load.created)
        with redis.Redis.from_url(server.redis_url) as probe:
            _rewrite_aof(probe)

    # When: Redis is SIGKILLed mid-load, just after a durability point; then the server too
    load = _run_until_crash(server.base_url, lambda: os.kill(server.redis_pid, signal.SIGKILL), make_durable_point)
    assert _wait_gone(server.redis_pid)
    server.proc.kill()
    server.proc.wait(timeout=EXIT_TIMEOUT_S)
    # Then: a new server replays the cut AOF into a consistent store holding every durable job
    _assert_recovered(start_server(data_dir), load, must_survive=durable)
