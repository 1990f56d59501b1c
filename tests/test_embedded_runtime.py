"""`ojs-run` and `ojs-server` with their own embedded Redis, as `make run` starts them: what
survives a restart, a SIGKILL of the supervisor, a Redis that dies, and who may connect."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from runtime import Draft
from runtime.embedded_redis import find_server_binary
from tests.conftest import skip_or_fail
from tests.fixtures.procs import REPO, Runtime, free_port, is_redis_server, wait_until
from tests.test_worker_runtime import completed, enqueue

pytestmark = pytest.mark.slow

POOL_HANDLERS = "tests.fixtures.pool_handlers"


@pytest.fixture(autouse=True)
def _server_binary() -> None:
    try:
        find_server_binary()
    except Exception as err:
        skip_or_fail(str(err))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def redis_pid(runtime: Runtime) -> int:
    line = wait_until(lambda: next((ln for ln in runtime.log().splitlines() if "embedded Redis started: pid=" in ln), ""),
                      what="the embedded Redis to start")
    return int(line.split("pid=")[1].split()[0])


def data_dir_free(data_dir: Path) -> bool:
    """Nothing holds the data dir any more (its lock is free, or it never had one)."""
    lock = data_dir / "ojs.lock"
    if not lock.exists():
        return True
    with open(lock) as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(held, fcntl.LOCK_UN)
    return True


def socket_url(data_dir: Path) -> str:
    return f"unix://{data_dir / 'redis.sock'}?db=0"


def healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ojs/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_embedded_restart_keeps_queued_scheduled_and_cron_jobs(redis_url: str, tmp_path: Path) -> None:
    # Given `ojs-run handlers_example` as `make run` starts it (no --redis, no --data-dir), with
    # a job queued where no handler takes it, a job scheduled for later and a cron registered
    state_home = tmp_path / "state"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start(n: int) -> Runtime:
        return Runtime(redis_url, "handlers_example", "--processes", "1", "--http", f"127.0.0.1:{port}",
                       log_path=tmp_path / f"ojs-run-{n}.log", embedded=True,
                       extra_env={"XDG_STATE_HOME": str(state_home), "HOME": str(tmp_path)})

    first = start(0)
    try:
        wait_until(lambda: healthy(base), what="the first runtime to serve")
        queued = httpx.post(f"{base}/ojs/v1/jobs", json={"type": "report.build", "args": [1],
                                                          "options": {"queue": "parked"}}).json()["job"]["id"]
        later = httpx.post(f"{base}/ojs/v1/jobs", json={"type": "email.send", "args": ["a@example.com", "hi"],
                                                         "options": {"scheduled_at": "+PT1H"}}).json()["job"]["id"]
        cron = httpx.post(f"{base}/ojs/v1/cron", json={"name": "nightly-report", "expression": "0 3 * * *",
                                                       "job_template": {"type": "report.build", "args": [2]}})
        assert cron.status_code in (200, 201), cron.text
        # When it stops (SIGTERM) and starts again
        first.send(signal.SIGTERM)
        assert first.wait_exit(30) == 0
    finally:
        first.stop()
    second = start(1)
    try:
        wait_until(lambda: healthy(base), what="the second runtime to serve")
        # Then all of them are still there
        assert httpx.get(f"{base}/ojs/v1/jobs/{queued}").json()["job"]["state"] == "available"
        assert httpx.get(f"{base}/ojs/v1/jobs/{later}").json()["job"]["state"] == "scheduled"
        assert "nightly-report" in httpx.get(f"{base}/ojs/v1/cron").text
        assert (state_home / "ojs" / "appendonlydir").is_dir()  # in the documented default place
    finally:
        second.stop()
        print(f"--- first\n{first.log()}\n--- second\n{second.log()}")


def test_embedded_supervisor_sigkill_lets_the_pools_settle_their_jobs(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path,
) -> None:
    # Given jobs running in a pool of a runtime with its own embedded Redis
    data_dir = tmp_path / "data"
    runtime = Runtime(redis_url, POOL_HANDLERS, "--processes", "1", "--concurrency", "4", "--no-http",
                      "--data-dir", str(data_dir), "--drain-timeout", "15", log_path=tmp_path / "ojs-run.log",
                      embedded=True)
    try:
        runtime.wait_ready(1)
        server = redis_pid(runtime)
        ids = enqueue(socket_url(data_dir), *(Draft(type="sleep.job", args=[1.5]) for _ in range(4)))
        wait_until(lambda: redis_client.scard("pooltest:started") == 4, what="4 jobs running")
        (pool,) = runtime.pool_pids()
        # When the supervisor is SIGKILLed
        runtime.proc.kill()
        runtime.proc.wait(10)
        # Then the pool drains and exits, and only then does Redis stop (it is not left running)
        wait_until(lambda: not alive(pool), timeout_s=25, what="the pool to drain and exit")
        wait_until(lambda: not alive(server), timeout_s=15, what="the embedded Redis to stop after the pool")
        wait_until(lambda: data_dir_free(data_dir), what="the data dir to be free")
        # ...and every job the pool ran was acked: completed, once
        check = subprocess.run(
            [sys.executable, "-c", _READ_STATES, str(data_dir), *ids], cwd=REPO, capture_output=True, text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        assert check.stdout.split() == ["completed"] * 4
    finally:
        runtime.stop()
        print(runtime.log())


# Reads the job states from the data dir's AOF with a fresh server (works with any EmbeddedRedis).
_READ_STATES = """
import sys, redis
from runtime.embedded_redis import EmbeddedRedis
from runtime.broker.keys import Keys
server = EmbeddedRedis(data_dir=sys.argv[1], persistence=True)
server.start()
client = redis.Redis.from_url(server.url)
print(" ".join((client.hget(Keys().job(i), "state") or b"-").decode() for i in sys.argv[2:]))
server.stop()
"""


def test_embedded_redis_that_dies_is_restarted_and_the_runtime_carries_on(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path,
) -> None:
    # Given a runtime on its own embedded Redis that has run a job
    data_dir = tmp_path / "data"
    runtime = Runtime(redis_url, POOL_HANDLERS, "--processes", "1", "--no-http", "--data-dir", str(data_dir),
                      log_path=tmp_path / "ojs-run.log", embedded=True)
    try:
        runtime.wait_ready(1)
        url = socket_url(data_dir)
        (first,) = enqueue(url, Draft(type="count.job"))
        wait_until(lambda: completed(redis.Redis.from_url(url), [first]), what="the first job")
        # When that Redis is SIGKILLed
        os.kill(redis_pid(runtime), signal.SIGKILL)

        # Then it comes back on the same socket, with its data, and a new job runs
        def enqueue_when_back() -> list[str]:
            try:
                return enqueue(url, Draft(type="count.job"))
            except (redis.RedisError, OSError):
                return []

        (second,) = wait_until(enqueue_when_back, what="the embedded Redis to be back")
        wait_until(lambda: completed(redis.Redis.from_url(url), [first, second]), what="the job after the restart")
        assert runtime.proc.poll() is None
        wait_until(lambda: "embedded Redis restarted" in runtime.log(), what="the supervisor to see it back")
    finally:
        runtime.stop()
        print(runtime.log())


def test_embedded_redis_whose_keeper_is_killed_stops_the_runtime_non_zero(
    redis_url: str, tmp_path: Path,
) -> None:
    # Given a runtime on its own embedded Redis (only expressible with the keeper)
    data_dir = tmp_path / "data"
    runtime = Runtime(redis_url, POOL_HANDLERS, "--processes", "1", "--no-http", "--data-dir", str(data_dir),
                      "--drain-timeout", "1", log_path=tmp_path / "ojs-run.log", embedded=True)
    try:
        runtime.wait_ready(1)
        line = next(ln for ln in runtime.log().splitlines() if "embedded Redis started" in ln)
        keeper = int(line.split("keeper=")[1].split()[0])
        # When the keeper dies (and its Redis with it), so nothing can bring Redis back
        os.kill(keeper, signal.SIGKILL)
        # Then the supervisor notices, and exits non-zero so that the service manager restarts it
        assert runtime.wait_exit(30) == 4
        assert "the embedded Redis died and could not be restarted" in runtime.log()
    finally:
        runtime.stop()
        print(runtime.log())


def test_embedded_redis_of_the_runtime_has_no_unauthenticated_listener(tmp_path: Path) -> None:
    # Given `ojs-server` with its embedded Redis
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OJS_") and k != "REDIS_URL"}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "--port", str(port), "--data-dir",
                                 str(tmp_path / "data")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), what="the server to serve")
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if is_redis_server(p)]
        assert len(servers) == 1
        # Then no TCP port of it answers a client that has no password
        listening = [c.laddr.port for c in servers[0].net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        for redis_port in listening:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=redis_port, socket_timeout=2).ping()
        # ...while the runtime itself works over its private socket
        job = httpx.post(f"http://127.0.0.1:{port}/ojs/v1/jobs", json={"type": "t", "args": []})
        assert job.status_code == 201
    finally:
        proc.terminate()
        proc.wait(20)
        print(log_path.read_text())
