"""systemd integration: the notify protocol over a real datagram socket, and the unit files.

A real `ojs-run` is started with NOTIFY_SOCKET pointing at a socket the test binds; it must send
READY=1 once its pools are up, WATCHDOG=1 from the supervisor loop, and STOPPING=1 when a drain
begins. The unit files are checked with `systemd-analyze verify` where it exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import sdnotify
from tests.fixtures.procs import REPO, Runtime, free_port

UNITS = sorted((REPO / "systemd").glob("*.service"))


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    if len(path) >= 100:  # AF_UNIX paths are short; fall back to the abstract namespace
        path = f"@ojs-test-{uuid.uuid4().hex}"
    sock.bind("\0" + path[1:] if path.startswith("@") else path)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, wanted: str, *, timeout_s: float = 20.0) -> list[str]:
    """Datagrams until one carries the line `wanted`; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted} within {timeout_s}s; got {seen}")
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if wanted in message.splitlines():
            return seen


def test_sdnotify_sends_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an abstract-namespace socket, as systemd may hand out
    name = f"@ojs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        # When
        assert sdnotify.notify("READY=1", "STATUS=up")
        # Then
        sock.settimeout(5)
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")  # not under systemd: a no-op


def test_sdnotify_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert sdnotify.watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


@pytest.mark.slow
def test_sdnotify_ojs_run_ready_watchdog_and_stopping(
    redis_url: str, tmp_path: Path, notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given ojs-run under a (pretend) service manager with a 1 s watchdog
    sock, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    runtime = Runtime(redis_url, "tests.fixtures.metrics_handlers", "--processes", "2", "--no-http",
                      "--drain-timeout", "5", log_path=tmp_path / "ojs-run.log")
    try:
        # When it starts, then READY=1 comes once both pools are up
        receive(sock, "READY=1")
        assert runtime.log().count(" ready: queues ") == 2
        # And the supervisor loop keeps pinging the watchdog
        receive(sock, "WATCHDOG=1")
        receive(sock, "WATCHDOG=1")
        # When it is told to stop, then STOPPING=1 comes at the start of the drain
        runtime.send(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        assert runtime.wait_exit() == 0
    finally:
        runtime.stop()
        print(runtime.log())


@pytest.mark.slow
def test_sdnotify_ojs_server_ready_watchdog_and_stopping(
    redis_url: str, tmp_path: Path, notify_socket: tuple[socket.socket, str],
) -> None:
    # Given ojs-server alone under a (pretend) service manager
    sock, address = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    with open(tmp_path / "ojs-server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "--port", str(free_port()), "--redis", redis_url],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Then READY=1 once it listens, watchdog pings from its event loop, STOPPING=1 on SIGTERM
        receive(sock, "READY=1")
        receive(sock, "WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sdnotify_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    assert {unit.name for unit in UNITS} >= {"ojs-run.service", "ojs-server.service"}
    venv_bin = Path(sys.executable).parent
    for unit in UNITS:
        # The units name the install location; point them at this checkout's executables.
        text = unit.read_text().replace("/opt/ojs-runtime/.venv/bin/", f"{venv_bin}/")
        (tmp_path / unit.name).write_text(text)
        done = subprocess.run([analyze, "verify", str(tmp_path / unit.name)], capture_output=True, text=True,
                              timeout=60)
        problems = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line or "ojs" in line]
        assert done.returncode == 0 and not problems, f"{unit.name}:\n{done.stdout}{done.stderr}"
