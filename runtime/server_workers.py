"""``ojs-server --workers N``: N processes serving one port, so the HTTP endpoint is not bound to
one Python process.

The parent binds everything before the first fork and holds no event loop, Redis client or
thread while it forks (conventions §3.4):

* one listening socket per process slot, all on the same port with SO_REUSEPORT, so the kernel
  spreads the connections over the slots. The parent keeps its copy of every socket open while
  it runs: a slot whose process died keeps its queue of connections, and its replacement (which
  inherits the same socket) accepts them; none is reset. A port that anything holds already,
  even another server with SO_REUSEPORT, is refused at start (a bind without SO_REUSEPORT is
  tried first), so a second server can never silently share the port;
* the embedded Redis (no ``--redis``), started once, on its Unix socket;
* the Prometheus multiprocess directory: every process writes its samples there and whichever
  process answers ``/metrics`` sums them all (the job counters of every process, not one
  process' share); a reaped process' live gauges are dropped.

Once per server, not per process: the scheduler loops (promotion, reaping, cron, the statistics
rollup, the store upgrade) and the webhook delivery loop run in slot 0 only. They would be safe
in every process (each step is one atomic script, a cron tick is claimed once, deliveries are
leased), but their Redis load would grow with N for nothing. A slot 0 that dies is restarted like
any other; until then the loops pause, which the lease reaper reads as an outage and answers with
its grace period (runtime/broker/outage.py), never by expiring live leases.

Per process: uvicorn on httptools, the Redis connection pool (``redis_max_connections``) and the
concurrency bound (``http_max_concurrency``): the server's totals are N times these. ``/health``
and ``/ready`` answer from the process that takes the request: its own Redis probe.

A process that dies is restarted (with backoff when it dies right after starting); one that
cannot boot (exit code 3) stops the server with code 3 rather than crash-looping. Every process
beats on a pipe to the parent from its event loop; one whose beats stop for
``server_process_stale_ms`` (a blocked loop, a deadlock, a stopped process) is hung: the parent
kills it (SIGKILL: a blocked loop would not act on SIGTERM) and restarts it, as it does one not
serving ``server_process_start_timeout_ms`` after its start. Without that a hung slot 0 would
stop the scheduler loops for good, unseen. SIGTERM or
SIGINT: every process stops accepting and finishes its in-flight requests (uvicorn's graceful
shutdown, up to ``GRACEFUL_S``), then the embedded Redis stops; exit code 0. A second signal kills
the processes at once (exit code 1). Under systemd (``Type=notify``) the parent is the main
process: READY=1 once every slot serves, WATCHDOG=1 from its loop only while every process beats
(or is starting, within its start timeout), so one the parent could not replace gets the service
restarted; STOPPING=1 at the stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time

import msgspec
import uvicorn
import uvloop

from runtime import metrics, sdnotify, trace_export
from runtime.broker.clients import endpoint_client
from runtime.broker.core import Broker
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis, default_data_dir, redacted
from runtime.liveness import EXIT_BOOT_ERROR, EXIT_OK
from runtime.server import (
    LISTEN_BACKLOG,
    LOCK_WAIT_S,
    build_app,
    check_binding,
    open_listener,
    uvicorn_config,
)

logger = logging.getLogger(__name__)

GRACEFUL_S = 30.0  # in-flight requests get this long to finish at a stop (as with one process)
STOP_MARGIN_S = 5.0  # past the graceful period, before a process that is still there is killed
MIN_UPTIME_S = 1.0  # a process dying sooner than this is crash-looping: restart with backoff
MAX_BACKOFF_S = 10.0
TICK_S = 0.5
BEAT_S = 0.25  # a process' beat interval; staleness is at least 4 of these (Settings checks 1 s)
EXIT_FORCED = 1
_PR_SET_PDEATHSIG = 1
_LOOPS_SLOT = 0  # the slot whose process runs the scheduler and webhook loops


def open_listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port, with SO_REUSEPORT. The port must be free: a plain
    bind is tried first (and closed), so a server already there is an error, not a partner."""
    probe = open_listener(host, port)  # CannotListen with the address when it is taken
    port = probe.getsockname()[1]  # port 0: the one the system chose, for every slot
    probe.close()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            listeners.append(socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG,
                                                  reuse_port=True))
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


class _Slot:
    __slots__ = ("index", "listener", "pid", "started", "deadline", "backoff_s", "due", "ready", "beat",
                 "killed")

    def __init__(self, index: int, listener: socket.socket) -> None:
        self.index, self.listener = index, listener
        self.pid: int | None = None
        self.started = 0.0
        self.deadline: float | None = None  # set at a stop: when SIGTERM turns into SIGKILL
        self.backoff_s = 0.0
        self.due = 0.0  # monotonic: no restart before this
        self.ready = False  # its process has said it serves
        self.beat = 0.0  # monotonic: its process' last beat (its event loop ran then)
        self.killed = False  # killed as hung or slow to start: not killed again before it is reaped


class ServerWorkers:
    """The parent of ``ojs-server --workers N``. ``run()`` returns the exit code."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings, self.workers = settings, workers
        self.slots: list[_Slot] = []
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.exit_code = EXIT_OK
        self.embedded: EmbeddedRedis | None = None
        self.notifier = sdnotify.Notifier()
        self._wake_r, self._wake_w = os.pipe()
        # Each process writes "<slot> <pid>" once it serves, then again every BEAT_S from its loop.
        self._ready_r, self._ready_w = os.pipe()
        self.stale_s = settings.server_process_stale_ms / 1000
        self.start_timeout_s = settings.server_process_start_timeout_ms / 1000
        self._ever_ready = False

    def run(self) -> int:
        check_binding(self.settings)
        listeners = open_listeners(self.settings.host, self.settings.port, self.workers)
        self.slots = [_Slot(i, sock) for i, sock in enumerate(listeners)]
        logger.info("OJS endpoint on http://%s:%s (%d processes)", self.settings.host,
                    listeners[0].getsockname()[1], self.workers)
        metrics_dir = metrics.enable_multiprocess()
        self._install_signals()
        try:
            self._start_redis()
            while not (self.stopping and not self._alive()):
                self._spawn_missing()
                self._wait()
                self._handle_signals()
                self._reap()
                self._kill_hung()
                self._enforce_deadlines()
                self._tell_systemd()
        finally:
            self._cleanup()
            metrics.disable_multiprocess(metrics_dir[0], created=metrics_dir[1])
        logger.info("server exits with code %d", self.exit_code)
        return self.exit_code

    # --- boot ------------------------------------------------------------------------------------

    def _start_redis(self) -> None:
        if self.settings.redis_url is not None:
            return
        self.embedded = EmbeddedRedis(
            data_dir=self.settings.data_dir or default_data_dir(), persistence=True, tcp=False,
            appendfsync=self.settings.embedded_appendfsync, lock_wait_s=LOCK_WAIT_S,
        )
        self.embedded.start()
        url = self.embedded.local_url
        logger.info("using embedded Redis at %s", redacted(url))
        self.settings = msgspec.structs.replace(self.settings, redis_url=url)

    # --- signals ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        # The write end too (shared by every process): a beat that finds the pipe full is dropped,
        # never waited for in an event loop.
        for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # record only: the loop acts

    def _wait(self) -> None:
        readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], TICK_S)
        for fd in readable:
            data = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 512):
                    data += chunk
            if fd == self._ready_r:
                for line in data.splitlines():
                    index, pid = (int(part) for part in line.split())
                    self._on_beat(index, pid)

    def _on_beat(self, index: int, pid: int) -> None:
        # By pid: a beat a killed process wrote just before it died is not its replacement's.
        if 0 <= index < len(self.slots) and self.slots[index].pid == pid:
            self.slots[index].ready = True
            self.slots[index].beat = time.monotonic()

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig not in (signal.SIGTERM, signal.SIGINT):
                continue
            if self.stopping:
                logger.warning("second signal: killing every server process now")
                self.exit_code = self.exit_code or EXIT_FORCED
                for slot in self._alive():
                    _send(slot.pid, signal.SIGKILL)
            else:
                self._begin_stop(signal.Signals(sig).name)

    def _begin_stop(self, why: str) -> None:
        logger.info("%s: stopping; in-flight requests get up to %.0fs", why, GRACEFUL_S)
        self.stopping = True
        self.notifier.stopping("finishing in-flight requests")
        # The parent's copies go now: once a process has closed its own (at once, on SIGTERM),
        # its socket is gone and a new connection is refused instead of left waiting in a queue
        # that no process will accept from.
        for slot in self.slots:
            slot.listener.close()
        deadline = time.monotonic() + GRACEFUL_S + STOP_MARGIN_S
        for slot in self._alive():
            slot.deadline = deadline
            _send(slot.pid, signal.SIGTERM)

    # --- processes -------------------------------------------------------------------------------

    def _alive(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _spawn_missing(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and now >= slot.due:
                self._fork(slot)

    def _fork(self, slot: _Slot) -> None:
        # SIGTERM held across the fork: one that reaches the child before it is itself would run
        # the parent's handler (which only records) and be lost.
        saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            code = EXIT_FORCED
            try:
                self._become_child(slot)
                signal.pthread_sigmask(signal.SIG_SETMASK, saved)
                code = _serve_slot(self.settings, slot.listener, slot.index, self._ready_w)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else EXIT_FORCED
            except BaseException:
                logger.exception("server process %d failed", slot.index)
            finally:
                trace_export.stop()
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
        slot.pid, slot.started, slot.ready, slot.killed = pid, time.monotonic(), False, False
        slot.beat = slot.started
        logger.info("started server process %d (pid %d)%s", slot.index, pid,
                    ", with the scheduler loops" if slot.index == _LOOPS_SLOT else "")

    def _become_child(self, slot: _Slot) -> None:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        # SIGTERM's default action until it serves: one held across the fork ends it at once.
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.close(fd)
        for other in self.slots:
            if other is not slot:
                other.listener.close()
        if self.embedded is not None:
            self.embedded.after_fork()  # a user of the embedded Redis, not its owner
        os.environ.pop("NOTIFY_SOCKET", None)  # the parent speaks to the service manager
        os.setpgid(0, 0)  # out of the terminal's process group: a second Ctrl-C must not reach uvicorn
        if sys.platform.startswith("linux"):  # die with the parent, even if it is SIGKILLed
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(EXIT_FORCED)
        trace_export.start("server")  # here, after the fork: the exporter holds a thread

    def _reap(self) -> None:
        for slot in self._alive():
            assert slot.pid is not None
            try:
                done, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                done, status = slot.pid, 0
            if done:
                self._on_exit(slot, os.waitstatus_to_exitcode(status))

    def _on_exit(self, slot: _Slot, code: int) -> None:
        assert slot.pid is not None
        pid, slot.pid, slot.ready, slot.deadline = slot.pid, None, False, None
        metrics.mark_process_dead(pid)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.stopping:
            logger.info("server process %d (pid %d) ended: %s", slot.index, pid, how)
            return
        logger.warning("server process %d (pid %d) ended: %s; restarting it", slot.index, pid, how)
        if code == EXIT_BOOT_ERROR:
            logger.critical("server process %d could not start serving (see above): stopping", slot.index)
            self.exit_code = EXIT_BOOT_ERROR
            self._begin_stop("boot error")
        elif time.monotonic() - slot.started < MIN_UPTIME_S:
            slot.backoff_s = min(max(0.5, slot.backoff_s * 2), MAX_BACKOFF_S)
            slot.due = time.monotonic() + slot.backoff_s
            logger.warning("server process %d died right after starting: restarting in %.1fs",
                           slot.index, slot.backoff_s)
        else:
            slot.backoff_s, slot.due = 0.0, 0.0

    def _current(self, slot: _Slot, now: float) -> bool:
        """Its process beats, or is still within its start timeout."""
        if slot.ready:
            return now - slot.beat <= self.stale_s
        return now - slot.started <= self.start_timeout_s

    def _kill_hung(self) -> None:
        if self.stopping:  # the stop's own deadline is the bound then
            return
        now = time.monotonic()
        for slot in self._alive():
            if slot.killed or self._current(slot, now):
                continue
            if slot.ready:
                logger.warning("server process %d (pid %d) is hung: no beat from its event loop for %.1fs; "
                               "killing it", slot.index, slot.pid, now - slot.beat)
            else:
                logger.warning("server process %d (pid %d) did not start serving within %gs: killing it",
                               slot.index, slot.pid, self.start_timeout_s)
            slot.killed = True
            _send(slot.pid, signal.SIGKILL)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self._alive():
            if slot.deadline is not None and now > slot.deadline:
                logger.warning("server process %d did not stop in time: killing it", slot.index)
                slot.deadline = None
                _send(slot.pid, signal.SIGKILL)

    def _tell_systemd(self) -> None:
        # Not while a process is stale: one the parent cannot replace (or a parent that cannot
        # reap) then gets the whole service restarted, as a blocked loop does with one process.
        now = time.monotonic()
        if all(self._current(slot, now) for slot in self._alive()):
            self.notifier.watchdog()
        if not self.stopping and not self._ever_ready and all(slot.ready for slot in self.slots):
            self._ever_ready = True
            logger.info("all %d server processes serve", self.workers)
            self.notifier.ready(f"{self.workers} server processes serving")

    def _cleanup(self) -> None:
        for slot in self._alive():
            _send(slot.pid, signal.SIGKILL)
        for slot in self._alive():
            assert slot.pid is not None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(slot.pid, 0)
            metrics.mark_process_dead(slot.pid)
            slot.pid = None
        for slot in self.slots:
            slot.listener.close()
        if self.embedded is not None:
            self.embedded.stop()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _serve_slot(settings: Settings, listener: socket.socket, index: int, ready_w: int) -> int:
    """One server process: the endpoint on its slot's socket (with the loops in slot 0) until
    SIGTERM; exit code 3 when it never got to serve."""
    # A SIGTERM before uvicorn takes over the signal is recorded and passed on to it once it has;
    # uvicorn re-raises the one it stopped on at the end, which this handler then only records.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))

    async def serve() -> bool:
        redis = endpoint_client(settings, settings.redis_url or "")
        broker = Broker(redis, settings)
        try:
            app, _services = build_app(broker, settings, loops=index == _LOOPS_SLOT)
            server = uvicorn.Server(uvicorn_config(app, settings, graceful_s=GRACEFUL_S))
            told = asyncio.get_running_loop().create_task(_tell_parent(server, index, ready_w, early))
            try:
                await server.serve(sockets=[listener])
            finally:
                told.cancel()
            return server.started
        finally:
            await broker.close()
            await redis.aclose(close_connection_pool=True)

    started = asyncio.Runner(loop_factory=uvloop.new_event_loop).run(serve())
    return EXIT_OK if started else EXIT_BOOT_ERROR


async def _tell_parent(server: uvicorn.Server, index: int, ready_w: int, early: list[int]) -> None:
    """Once uvicorn serves: the slot and pid on the parent's pipe (for READY=1), then again every
    BEAT_S from this event loop, so that a blocked loop goes stale. First run inside uvicorn's
    serve(), when its signal handlers are in place: a stop asked before is its now."""
    if early:
        server.should_exit = True
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    beat = f"{index} {os.getpid()}\n".encode()  # under PIPE_BUF: one atomic write
    while True:  # until serve() returns: a draining process beats too
        with contextlib.suppress(BlockingIOError, BrokenPipeError):  # full pipe: the next beat will do
            os.write(ready_w, beat)
        await asyncio.sleep(BEAT_S)


def _send(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
