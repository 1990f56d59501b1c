"""`ojs-server --workers N` (OJS_SERVER_WORKERS) as real processes on a real Redis: one port for
every process, /metrics summing all of them, a process that dies restarted, and a SIGTERM that
lets every in-flight request finish."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from runtime import timefmt
from tests.fixtures.broker_process import ROOT, BrokerProcess
from tests.fixtures.procs import wait_until
from tests.test_sdnotify import receive


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A pretend service manager's socket: the parent says READY=1 once every process serves."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"ojs-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    yield sock, "@" + name
    sock.close()


@pytest.fixture
def server(redis_url: str, tmp_path: Path, metrics_dir: Path, notify: tuple[socket.socket, str]) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(redis_url, tmp_path, env={
        "OJS_SERVER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "NOTIFY_SOCKET": notify[1],
        "OJS_REDIS_COMMAND_TIMEOUT_MS": "60000",  # the drain test holds a command for a while
    }, log_level="info")  # a stop that takes long shows its steps in the log printed below
    try:
        receive(notify[0], "READY=1")  # both processes serve: a connection to either is answered
        assert len(children(proc)) == 2
        yield proc
    finally:
        print(proc.log_tail())
        proc.stop()


def children(server: BrokerProcess) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.proc.pid).children())


def enqueue(url: str, **options: object) -> str:
    """On a connection of its own (no client reuse), so the kernel picks the process anew."""
    reply = httpx.post(f"{url}/ojs/v1/jobs", json={"type": "w", "args": [], "options": options}, timeout=10)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["job"]["id"])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_every_process_serves_the_port_and_metrics_sum_them_all(server: BrokerProcess, metrics_dir: Path) -> None:
    for _ in range(40):
        enqueue(server.url)
    # Each process that served an enqueue wrote its own samples (the kernel spread the
    # connections over both: 40 fresh connections all hashed to one socket is a 1 in 2^39 chance).
    writers = {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("counter_*.db")}
    assert set(children(server)) <= writers
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'ojs_job_enqueued_total{queue="default",type="w"} 40.0' in text


def test_the_scheduler_loops_run(server: BrokerProcess) -> None:
    due = timefmt.format_ms(timefmt.now_ms() + 300)
    job_id = enqueue(server.url, queue="later", scheduled_at=due)
    wait_until(lambda: httpx.get(f"{server.url}/ojs/v1/jobs/{job_id}", timeout=10).json()["job"]["state"] == "available",
               what="the scheduled job promoted")


@pytest.mark.parametrize("slot", [0, 1], ids=["the-loops-process", "another"])
def test_a_process_that_dies_is_restarted(server: BrokerProcess, slot: int) -> None:
    before = children(server)
    victim = before[slot]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(after := children(server)) == 2 and victim not in after, what="a replacement process")
    for _ in range(10):
        enqueue(server.url)
    assert server.proc.poll() is None


def test_sigterm_lets_an_in_flight_request_finish(
    server: BrokerProcess, redis_client: redis.Redis, notify: tuple[socket.socket, str],
) -> None:
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))
    payload = "x" * 200_000  # marks the enqueue among the blocked clients (argv-mem)
    outcome: dict[str, httpx.Response | BaseException] = {}

    def blocked() -> bool:
        """The enqueue reached Redis and waits: its script is the blocked command, or it waits
        in the query buffer of a connection whose command before it is blocked (a process'
        pipelined connection, behind a paused write of the scheduler loops)."""
        return any(c["db"] == db and "b" in c["flags"] and max(int(c["argv-mem"]), int(c["qbuf"])) > 100_000
                   for c in redis_client.client_list())

    for _ in range(40):  # each process has made its first enqueue (a read first): the next one is its script
        enqueue(server.url)

    def send() -> None:
        try:
            outcome["reply"] = httpx.post(f"{server.url}/ojs/v1/jobs", json={"type": "w", "args": [payload]}, timeout=60)
        except BaseException as err:  # reported by the assertion below
            outcome["reply"] = err

    redis_client.client_pause(30_000, all=False)  # writes wait: the enqueue's script stays in flight
    try:
        sender = threading.Thread(target=send)
        sender.start()
        wait_until(blocked, what="the enqueue waiting in Redis")
        server.proc.send_signal(signal.SIGTERM)
        receive(notify[0], "STOPPING=1")
        wait_until(lambda: refused(server.port), what="every process stopped accepting")
        assert server.proc.poll() is None  # still draining the enqueue
    finally:
        redis_client.client_unpause()
    sender.join(timeout=60)
    reply = outcome["reply"]
    assert isinstance(reply, httpx.Response), reply
    assert reply.status_code == 201, reply.text
    assert redis_client.exists(f"{{ojs}}:job:{reply.json()['job']['id']}")
    assert server.wait_exit(30) == 0


def test_a_port_that_is_taken_is_refused_even_by_a_server_with_reuseport(server: BrokerProcess, redis_url: str) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "runtime", "--workers", "2", "--port", str(server.port), "--redis", redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("OJS_")},
    )
    assert second.returncode == 3, second.stderr
    assert "address already in use" in second.stderr


def test_connections_made_while_a_process_is_dead_are_served_by_its_replacement(server: BrokerProcess) -> None:
    victim = children(server)[1]
    os.kill(victim, signal.SIGKILL)
    # About half of these fresh connections land in the dead process' queue: they wait there
    # for its replacement, none is reset.
    codes = [httpx.get(f"{server.url}/health", timeout=20).status_code for _ in range(30)]
    assert codes == [200] * 30
    assert victim not in children(server)


def test_a_later_run_counts_only_its_own_samples_in_the_metrics_directory(
    redis_url: str, tmp_path: Path, metrics_dir: Path,
) -> None:
    """A run leaves its samples in PROMETHEUS_MULTIPROC_DIR; the next run on that directory (with
    one process) counts its own enqueues only."""
    def enqueued(url: str) -> str:
        line = 'ojs_job_enqueued_total{queue="default",type="w"}'
        return next(s for s in httpx.get(f"{url}/metrics", timeout=10).text.splitlines() if s.startswith(line))

    for workers, enqueues in (("2", 5), ("1", 1)):
        proc = BrokerProcess(redis_url, tmp_path, env={
            "OJS_SERVER_WORKERS": workers, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        try:
            proc.wait_ready()
            for _ in range(enqueues):
                enqueue(proc.url)
            assert enqueued(proc.url).endswith(f" {enqueues}.0"), enqueued(proc.url)
        finally:
            print(proc.log_tail())
            proc.stop()


def _enqueue_past(url: str, **options: object) -> str | None:
    """An enqueue that may land on a hung process: None when it is not answered."""
    try:
        reply = httpx.post(f"{url}/ojs/v1/jobs", json={"type": "w", "args": [], "options": options}, timeout=2)
    except httpx.TimeoutException:
        return None
    assert reply.status_code == 201, reply.text
    return str(reply.json()["job"]["id"])


def test_a_hung_process_is_killed_and_replaced_so_the_scheduler_loops_resume(
    redis_url: str, tmp_path: Path, metrics_dir: Path, notify: tuple[socket.socket, str],
) -> None:
    """A process whose event loop stops beating (SIGSTOP stands for a blocked loop or a deadlock)
    is killed and restarted by the parent. For slot 0 that brings the scheduler loops back: a job
    that falls due while it hangs is promoted."""
    proc = BrokerProcess(redis_url, tmp_path, env={
        "OJS_SERVER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "NOTIFY_SOCKET": notify[1],
        "WATCHDOG_USEC": "2000000", "OJS_SERVER_PROCESS_STALE_MS": "2000",
    })
    hung: int | None = None
    try:
        receive(notify[0], "READY=1")
        hung = children(proc)[0]  # the first forked (lowest pid): slot 0, with the scheduler loops
        os.kill(hung, signal.SIGSTOP)
        # A connection the kernel gives the hung process is not answered: try again until one is.
        job_id = wait_until(lambda: _enqueue_past(
            proc.url, queue="later", scheduled_at=timefmt.format_ms(timefmt.now_ms() + 500)),
            timeout_s=30, what="an enqueue answered")
        wait_until(lambda: len(now := children(proc)) == 2 and hung not in now, timeout_s=30,
                   what="a replacement for the hung process")
        wait_until(lambda: httpx.get(f"{proc.url}/ojs/v1/jobs/{job_id}", timeout=10).json()["job"]["state"]
                   == "available", timeout_s=30, what="the due job promoted by the new slot 0")
        assert f"server process 0 (pid {hung}) is hung" in proc.log_path.read_text(errors="replace")
        assert proc.proc.poll() is None
    finally:
        if hung is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
        print(proc.log_tail())
        proc.stop()


def test_a_process_that_does_not_start_serving_in_time_is_killed(redis_url: str, tmp_path: Path, metrics_dir: Path) -> None:
    proc = BrokerProcess(redis_url, tmp_path, env={
        "OJS_SERVER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "OJS_SERVER_PROCESS_START_TIMEOUT_MS": "1",  # no process serves within a millisecond of its fork
    })
    try:
        wait_until(lambda: "did not start serving within" in proc.log_path.read_text(errors="replace"),
                   timeout_s=30, what="the parent to kill a process that does not start in time")
        assert proc.proc.poll() is None  # killed and restarted, not a stop of the server
    finally:
        print(proc.log_tail())
        proc.stop()
