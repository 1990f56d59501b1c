"""The keeper of an embedded Redis: a tiny process between its owner and the server.

Run by :class:`runtime.embedded_redis.EmbeddedRedis` as ``python -I redis_keeper.py CONFIG``
(stdlib only, so it starts in milliseconds and imports nothing of the runtime). Why it exists:

* **Redis must outlive the processes that use it.** When the owner (the supervisor) dies, even by
  SIGKILL, its pools get their parent-death signal and drain: their acks need Redis. A Redis
  that got the same death signal would be gone before them. The keeper watches two lifelines
  instead: its stdin (the owner's end, EOF when the owner dies) and ``users_fd``, the read end
  of a pipe whose write end the owner and every process forked from it hold (EOF once the last
  of them has exited). Redis is stopped when the users are all gone, or ``outlive_s`` after the
  owner died, whichever comes first: it is never left running once everything else died.
* **A Redis that dies is restarted** on the same data directory, config, socket, port and
  password, with backoff, once the owner has seen it ready (a server that cannot start the
  first time is the owner's error to report). The keeper gives up, and exits 1, when the server
  stays down for ``restart_window_s``; the owner notices its keeper is gone.
* The keeper reports on stdout, one line per event: ``started <pid>`` and ``exited <code>``.

Redis gets ``PR_SET_PDEATHSIG(SIGTERM)`` towards the keeper, so a keeper killed by SIGKILL
still takes its server down (SIGTERM: Redis fsyncs its AOF and exits). SIGTERM to the keeper
stops the server the same way and then the keeper.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 10.0
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
TICK_S = 0.5


class Keeper:
    def __init__(self, config: dict) -> None:  # type: ignore[type-arg]
        self.argv: list[str] = config["argv"]
        self.log_path: str = config["log"]
        self.users_fd: int = config["users_fd"]
        self.lock_fd: int = config["lock_fd"]  # the data dir's lock: the server holds it too
        self.outlive_s: float = config["outlive_s"]
        self.restart_window_s: float = config["restart_window_s"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False  # the owner has seen the server answer
        self.owner_gone_at: float | None = None
        self.down_since: float | None = None
        self.backoff_s = FIRST_BACKOFF_S
        self.restart_at = 0.0
        self.stop_requested = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the owner's to handle
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes the select through the pipe

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True

    def run(self) -> int:
        self._spawn()
        watched = [sys.stdin.fileno(), self.users_fd, self.wake_r]
        while True:
            timeout = TICK_S
            if self.proc is None:
                timeout = min(timeout, max(0.0, self.restart_at - time.monotonic()))
            if self.owner_gone_at is not None:
                timeout = min(timeout, max(0.0, self.owner_gone_at + self.outlive_s - time.monotonic()))
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.wake_r in readable:
                _drain(self.wake_r)
            if sys.stdin.fileno() in readable and not self._read_owner():
                watched.remove(sys.stdin.fileno())
                self.owner_gone_at = time.monotonic()
            if self.users_fd in readable and not os.read(self.users_fd, 64):
                return self._stop("every process using the server has exited")
            if self.stop_requested:
                return self._stop("asked to stop")
            if self.owner_gone_at is not None and time.monotonic() >= self.owner_gone_at + self.outlive_s:
                return self._stop(f"its owner died {self.outlive_s:.0f}s ago")
            code = self._check_server()
            if code is not None:
                return code

    def _read_owner(self) -> bool:
        """The owner writes ``ready`` once it has seen the server answer; EOF: the owner died."""
        data = os.read(sys.stdin.fileno(), 64)
        if b"ready" in data:
            self.ready = True
            self.down_since = None
            self.backoff_s = FIRST_BACKOFF_S
        return bool(data)

    def _check_server(self) -> int | None:
        """Restart a server that died on its own; None while the keeper goes on."""
        now = time.monotonic()
        if self.proc is not None and (code := self.proc.poll()) is not None:
            self.proc = None
            _report(f"exited {code}")
            if code == 0:  # a SHUTDOWN or a SIGTERM from someone entitled to stop it
                return 0
            if not self.ready:
                return 1  # never came up: the owner reports why, from the log
            self.down_since = self.down_since or now
            self.restart_at = now + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
            _log(self.log_path, f"server exited with {code}; restarting it in {self.restart_at - now:.1f}s")
        if self.proc is None:
            if self.down_since is not None and now - self.down_since > self.restart_window_s:
                _log(self.log_path, f"server down for {self.restart_window_s:.0f}s; giving up")
                return 1
            if now >= self.restart_at:
                self._spawn()
        elif self.down_since is not None and self.proc.poll() is None and now - self.restart_at > 1.0:
            self.down_since = None  # up for a second: the next death starts a new window
            self.backoff_s = FIRST_BACKOFF_S
        return None

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(self.lock_fd,), preexec_fn=_die_with_keeper_hook(),  # single-threaded: safe  # noqa: PLW1509
                )
            except OSError as err:
                _log(self.log_path, f"cannot start the server: {err}")
                self.proc = None
                if not self.ready:
                    _report(f"error {err}")
                    sys.exit(1)
                self.down_since = self.down_since or time.monotonic()
                self.restart_at = time.monotonic() + self.backoff_s
                self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
                return
        _report(f"started {self.proc.pid}")

    def _stop(self, why: str) -> int:
        if self.proc is not None and self.proc.poll() is None:
            _log(self.log_path, f"stopping the server: {why}")
            self.proc.terminate()  # Redis fsyncs its AOF and exits
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            _report(f"exited {self.proc.returncode}")
        return 0


def _die_with_keeper_hook() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    keeper = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != keeper:
            os._exit(1)

    return hook


def _report(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the owner is gone: nobody to tell


def _log(path: str, message: str) -> None:
    try:
        with open(path, "a") as log:
            log.write(f"{os.getpid()}:K {time.strftime('%d %b %Y %H:%M:%S')} # keeper: {message}\n")
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main() -> int:
    config = json.loads(sys.argv[1])
    os.set_blocking(config["users_fd"], False)
    return Keeper(config).run()


if __name__ == "__main__":
    sys.exit(main())
