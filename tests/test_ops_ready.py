"""/ready and /health of a real `ojs-run` whose Redis goes away and comes back, whose pool stalls,
and which is quieted; no restart of the runtime in between. Both the HTTP endpoint and the
``--metrics-port`` endpoint answer from the same shared state."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.embedded_redis import EmbeddedRedis
from tests.fixtures.procs import Runtime, free_port, wait_until

pytestmark = pytest.mark.slow

STALL_S = 1.5


def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"{base}{path}", timeout=5)
    except httpx.TransportError as err:
        return 0, {"error": str(err)}
    return response.status_code, response.json()


def ready_is(bases: list[str], status: int, reason: str | None = None) -> bool:
    for base in bases:
        code, body = probe(base, "/ready")
        if code != status or (reason is not None and not str(body.get("reason", "")).startswith(reason)):
            return False
    return True


def test_ops_ready_follows_redis_stalls_and_quiet_without_a_restart(
    make_embedded_redis: Any, tmp_path: Path,
) -> None:
    # Given ojs-run on a Redis the test controls, with a short stall timeout
    data_dir = str(tmp_path / "redis")
    server: EmbeddedRedis = make_embedded_redis(data_dir=data_dir, persistence=True, port=free_port())  # this worker's own
    url = server.start()
    redis_port = server.port
    http, probes = free_port(), free_port()
    bases = [f"http://127.0.0.1:{http}", f"http://127.0.0.1:{probes}"]
    runtime = Runtime(url, "tests.fixtures.metrics_handlers", "--processes", "1", "--http", f"127.0.0.1:{http}",
                      "--metrics-port", str(probes), "--stall-timeout", str(STALL_S),
                      "--liveness-timeout", "60", log_path=tmp_path / "ojs-run.log")
    try:
        wait_until(lambda: ready_is(bases, 200), what="ready")
        (pool_pid,) = runtime.pool_pids()
        assert probe(bases[0], "/health")[1]["status"] == "ok"
        assert b"ojs_pool_slots" in httpx.get(f"{bases[1]}/metrics").content

        # When Redis stops, then both endpoints turn unready (and /health unhealthy)
        server.stop()
        wait_until(lambda: ready_is(bases, 503, "backend unreachable"), timeout_s=STALL_S + 5,
                   what="unready without Redis")
        code, health = probe(bases[0], "/health")
        assert (code, health["status"], health["backend"]["status"]) == (503, "unhealthy", "unhealthy")
        # When a new Redis comes up on the same port and data dir, then ready again
        server = make_embedded_redis(data_dir=data_dir, port=redis_port, persistence=True)
        server.start()
        wait_until(lambda: ready_is(bases, 200), what="ready after Redis returned")

        # When the only pool stops fetching (frozen), then stalled after the stall timeout
        os.kill(pool_pid, signal.SIGSTOP)
        try:
            wait_until(lambda: ready_is(bases, 503, "stalled"), timeout_s=STALL_S + 5, what="stalled")
            assert probe(bases[0], "/health")[1]["status"] == "degraded"
        finally:
            os.kill(pool_pid, signal.SIGCONT)
        wait_until(lambda: ready_is(bases, 200), what="ready after the pool resumed")

        # When the runtime is quieted (SIGTSTP), then unready until it resumes (SIGCONT)
        runtime.send(signal.SIGTSTP)
        wait_until(lambda: ready_is(bases, 503, "quiet"), what="quiet")
        runtime.send(signal.SIGCONT)
        wait_until(lambda: ready_is(bases, 200), what="ready after resume")

        # Then the same processes did it all
        assert runtime.proc.poll() is None and runtime.pool_pids() == [pool_pid]
        runtime.send(signal.SIGTERM)
        assert runtime.wait_exit() == 0
    finally:
        runtime.stop()
        print(runtime.log())
