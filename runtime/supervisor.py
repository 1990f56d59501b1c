"""The pre-fork supervisor: keeps N pool processes (and one HTTP process) alive, and stops them.

Before the first fork it binds the HTTP socket and starts the embedded Redis; it never holds a
Redis client, an event loop or a thread while it forks (conventions §3.4). Its loop waits on a
self-pipe for signals (the handlers only record them) with a short tick, then reaps, checks the
children's liveness records, and forks what is missing:

* a pool process that dies is replaced, and the jobs it held are failed at once through
  ``worker:<id>:jobs``: when it crashed, by what it was doing with each (its run record, see
  :mod:`runtime.run_record`): a loss is counted only to a job that ran alone, the others that ran
  become suspects that run alone next, and the rest go back (a job that keeps killing its process
  is dead-lettered after a few losses); ``release`` when the supervisor stopped it;
* a pool that reports itself stuck (a sync handler past its timeout) is replaced: it has failed that
  job with a timeout itself, and is stopped like any other (SIGTERM: its other jobs get the drain
  timeout to finish, then what is left is released; SIGKILL only past the stop deadline);
* a pool whose liveness record goes stale (its event loop is blocked) is killed: ``worker_lost``;
* a pool above ``--max-memory-mb`` is recycled gracefully (SIGTERM: it drains and exits);
* a process that cannot boot (exit code 3, the handlers module does not import) stops everything
  with exit code 3 instead of crash-looping; a pool or HTTP process that dies right after it
  started is respawned with backoff.
* with ``reload_paths`` (``--reload``), a watcher child reports changed Python files on a pipe;
  once a probe child has imported the edited module, the pools are retired like a recycle and
  their replacements import the new code (see :mod:`runtime.reloader`). A pool that cannot boot
  is then retried with backoff rather than stopping everything: the module is being edited.

Releases run in short-lived forked processes, never in the loop, so signals and the watchdog keep
being served while Redis is slow or away; a release that fails is retried with backoff, and at a
stop for a bound after the pools are gone (what is still pending then is handed back by the next
start, see :mod:`runtime.recovery`, which also runs, in the same way, right after boot).

The embedded Redis (no ``--redis``) runs under its keeper (:mod:`runtime.redis_keeper`): it
outlives the supervisor until the pools have drained, even after a SIGKILL, and a Redis that dies
is restarted on the same data directory and socket (the pools reconnect by themselves). While it
is down the loop goes on; past ``REDIS_DOWN_PING_S`` the watchdog pings stop, and if the keeper
gives up the supervisor stops with ``EXIT_REDIS_LOST`` so that the service manager restarts it.

SIGTERM or SIGINT: pools stop fetching and drain up to ``drain_timeout_s``, hand back what is
left and exit; then the HTTP process stops, then the embedded Redis; exit code 0. A second signal
kills the children at once (their jobs are released) and exits with code 1.

Operations: before the first fork it prepares the Prometheus multiprocess directory (and marks
reaped children dead in it) and maps the readiness :class:`Board`; under systemd it sends
READY=1 once every pool is up, WATCHDOG=1 from its loop and STOPPING=1 when the drain begins. With
``metrics_port``, a second small HTTP process serves /metrics, /health and /ready there.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from runtime import default_client, metrics, recovery, reloader, sdnotify, trace_export, worker
from runtime.broker.clients import blocking_client
from runtime.broker.pool_ops import release_worker_blocking
from runtime.broker.shards import shard_settings
from runtime.config import Settings
from runtime.embedded_redis import EmbeddedRedis, EmbeddedRedisError, default_data_dir, redacted
from runtime.liveness import EXIT_BOOT_ERROR, EXIT_OK, Board, Liveness, Phase
from runtime.pool_ids import PoolIds
from runtime.run_record import RunSnapshot
from runtime.server import InsecureBinding, check_binding, open_listener, serve_socket

logger = logging.getLogger(__name__)

EXIT_FORCED = 1
EXIT_REDIS_LOST = 4  # the embedded Redis died and could not be restarted
HTTP_STOP_S = 10.0
MIN_UPTIME_S = 1.0  # a pool dying sooner than this is crash-looping: respawn with backoff
MAX_BACKOFF_S = 10.0
RELEASE_TIMEOUT_S = 10.0  # one release attempt (its own process)
RELEASE_STOP_GRACE_S = 15.0  # at a stop, pending releases are retried this long after the pools are gone
REDIS_DOWN_PING_S = 10.0  # the embedded Redis down this long: no more watchdog pings
LOCK_WAIT_S = 15.0  # a previous runtime on the same data dir may still be finishing its stop
REDIS_BOOT_WAIT_S = 5.0  # an external Redis that does not answer this long at start: a boot error
_PR_SET_PDEATHSIG = 1
_HELD_ACROSS_FORK = {signal.SIGTERM}  # not SIGTSTP: its default action would freeze the child
_TRACED_KINDS = frozenset({"pool", "http"})  # the processes that serve requests and run jobs


class RedisUnreachable(Exception):
    """The Redis given does not answer at start (the message names it, password hidden)."""


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    processes: int
    http: bool = True  # serve the HTTP endpoint and the scheduler loops from a child process
    max_memory_mb: int = 0  # 0: no limit
    liveness_timeout_s: float = 30.0
    boot_timeout_s: float = 60.0
    tick_s: float = 0.5
    metrics_port: int | None = None  # a separate /metrics, /health, /ready endpoint
    metrics_host: str | None = None  # its address; None: the HTTP host
    stall_s: float = 60.0  # /ready fails when no pool has fetched for this long
    reload_paths: tuple[str, ...] = ()  # --reload: replace the pools when Python files here change


class _Child:
    __slots__ = ("pid", "kind", "worker_id", "liveness", "started", "retiring", "deadline", "kill_reason",
                 "stop_reason", "release", "shard")

    def __init__(self, pid: int, kind: str, worker_id: str, liveness: Liveness | None) -> None:
        self.pid, self.kind, self.worker_id, self.liveness = pid, kind, worker_id, liveness
        self.started = time.monotonic()
        self.retiring = False  # asked to stop (or stopping by itself): a replacement may start
        self.deadline: float | None = None  # when SIGTERM turns into SIGKILL
        self.kill_reason: str | None = None  # stuck | unresponsive | shutdown (SIGKILL sent)
        self.stop_reason: str | None = None  # stuck (SIGTERM sent: replaced, given the drain grace)
        self.release: _Release | None = None  # for a release process: the one it runs
        self.shard = 0  # for a pool process: the shard of the namespace it serves


class _Release:
    """The jobs of one ended pool, to be handed back by a release process (retried until done)."""

    __slots__ = ("worker_id", "crashed", "record", "tries", "due")

    def __init__(self, worker_id: str, crashed: bool, record: RunSnapshot | None) -> None:
        self.worker_id, self.crashed, self.record = worker_id, crashed, record
        self.tries = 0
        self.due = 0.0  # monotonic; 0: now


class Supervisor:
    """Pre-fork parent. ``run()`` returns the process exit code."""

    def __init__(self, pool: worker.PoolConfig, *, config: SupervisorConfig) -> None:
        self.pool, self.config = pool, config
        self.children: dict[int, _Child] = {}
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.exit_code = EXIT_OK
        self.embedded: EmbeddedRedis | None = None
        self.listener: socket.socket | None = None
        self.metrics_listener: socket.socket | None = None
        self.metrics_dir = ("", False)
        self.board = Board(stall_s=config.stall_s)
        self.notifier = sdnotify.Notifier()
        self.pending_releases: list[_Release] = []  # waiting for their (next) release process
        self.pools_gone_at: float | None = None  # when a stop found every pool gone
        self.backoff: dict[str, tuple[float, float]] = {}  # kind -> (backoff, monotonic respawn time)
        self.ids = PoolIds()
        self.redis_down_since: float | None = None
        self.redis_lost = False
        self.pings_withheld = False
        self._wake_r, self._wake_w = os.pipe()
        # --reload: the watcher process writes to this pipe when files change (see runtime.reloader)
        self._changed_r, self._changed_w = os.pipe() if config.reload_paths else (-1, -1)
        self.reload_wanted = False
        self.probing = False  # a probe process is checking that the edited module imports

    def run(self) -> int:
        self._install_signals()
        try:
            self._boot()
        except (OSError, InsecureBinding, EmbeddedRedisError, RedisUnreachable) as err:
            logger.critical("cannot start: %s", err)
            self._cleanup()
            return EXIT_BOOT_ERROR
        try:
            self._fork_recovery()
            while not (self.stopping and not self.children and not self._releases_left()):
                self._spawn_missing()
                self._wait(self.config.tick_s)
                self._handle_signals()
                self._start_reload()
                self._reap()
                self._watch_redis()
                self._check_children()
                self._run_releases()
                self._tell_systemd()
        finally:
            self._cleanup()
        logger.info("supervisor exits with code %d", self.exit_code)
        return self.exit_code

    # --- boot and signals --------------------------------------------------------------------

    def _boot(self) -> None:
        settings = self.pool.settings
        self.metrics_dir = metrics.enable_multiprocess()
        if self.config.http:
            check_binding(settings)
            self.listener = open_listener(settings.host, settings.port)
            logger.info("OJS endpoint on http://%s:%s", settings.host, self.listener.getsockname()[1])
        if self.config.metrics_port is not None:  # open paths only, but they name queues and types
            host = self.config.metrics_host or settings.host
            check_binding(settings, host, what="/metrics, /health and /ready")
            self.metrics_listener = open_listener(host, self.config.metrics_port)
            logger.info("metrics on http://%s:%s/metrics", host, self.metrics_listener.getsockname()[1])
        if settings.redis_url is not None:
            self._reach_redis(settings.redis_url)
        else:
            if not self.config.http:
                logger.warning("--no-http with the embedded Redis: no scheduler loops run, so "
                               "expired leases and timeouts are not reaped")
            # It outlives the supervisor while the pools drain, and no longer (see redis_keeper).
            outlive_s = self.pool.stop_deadline_s() + HTTP_STOP_S
            self.embedded = EmbeddedRedis(
                data_dir=settings.data_dir or default_data_dir(), persistence=True, tcp=False,
                appendfsync=settings.embedded_appendfsync, outlive_s=outlive_s, lock_wait_s=LOCK_WAIT_S,
            )
            self.embedded.start()
            url = self.embedded.local_url
            logger.info("using embedded Redis at %s", redacted(url))
            settings = msgspec.structs.replace(settings, redis_url=url)
            self.pool = msgspec.structs.replace(self.pool, settings=settings)

    def _reach_redis(self, url: str) -> None:
        """A Redis that is not there at start is a mistake to report, not an outage to ride out
        (that comes later, once it has answered): wait a little for one that is starting too,
        then stop with its URL. A blocking client, closed before the first fork."""
        deadline = time.monotonic() + REDIS_BOOT_WAIT_S
        client = blocking_client(self.pool.settings, url, socket_connect_timeout=2, socket_timeout=2)
        said_waiting = False
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.AuthenticationError as err:
                    raise RedisUnreachable(f"Redis at {redacted(url)} refused the credentials: {err}") from None
                except redis.RedisError as err:
                    if time.monotonic() > deadline or any(
                        sig in (signal.SIGTERM, signal.SIGINT) for sig in self.signals
                    ):
                        raise RedisUnreachable(f"cannot reach Redis at {redacted(url)}: {err}") from None
                    if not said_waiting:
                        logger.info("waiting for Redis at %s", redacted(url))
                        said_waiting = True
                    time.sleep(0.25)
        finally:
            client.close()
            client.connection_pool.disconnect()

    def _install_signals(self) -> None:
        for fd in (self._wake_r, self._wake_w, self._changed_r):
            if fd >= 0:
                os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGTSTP, signal.SIGCONT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # record only: the loop acts (conventions §3.2)

    def _wait(self, timeout_s: float) -> None:
        readable, _, _ = select.select([fd for fd in (self._wake_r, self._changed_r) if fd >= 0], [], [], timeout_s)
        for fd in readable:
            try:
                while os.read(fd, 512):
                    pass
            except BlockingIOError:
                pass
            if fd == self._changed_r:
                self.reload_wanted = True

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT) and self.stopping:
                self._force()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(signal.Signals(sig).name)
            elif sig in (signal.SIGTSTP, signal.SIGCONT):
                self.board.set_flag(Board.QUIET, sig == signal.SIGTSTP)
                for child in self._pools():
                    _send(child.pid, sig)  # quiet / resume: the pools stop or restart fetching

    # --- stopping ------------------------------------------------------------------------------

    def _begin_stop(self, why: str) -> None:
        logger.info("%s: stopping; pools drain for up to %.0fs", why, self.pool.drain_timeout_s)
        self.stopping = True
        self.board.set_flag(Board.DRAINING, True)
        self.notifier.stopping(f"draining for up to {self.pool.drain_timeout_s:.0f}s")
        deadline = time.monotonic() + self.pool.stop_deadline_s()
        for child in self._pools():
            self._terminate(child, deadline)

    def _force(self) -> None:
        logger.warning("second signal: killing every process now")
        self.exit_code = self.exit_code or EXIT_FORCED
        for child in self.children.values():
            self._kill(child, "shutdown")

    def _terminate(self, child: _Child, deadline: float) -> None:
        if child.deadline is None:
            _send(child.pid, signal.SIGTERM)
            child.retiring, child.deadline = True, deadline

    def _kill(self, child: _Child, reason: str) -> None:
        if child.kill_reason is None:
            child.kill_reason = reason
            _send(child.pid, signal.SIGKILL)

    # --- reload ----------------------------------------------------------------------------------

    def _start_reload(self) -> None:
        """Files changed: first see, in a fresh fork, that the module still imports."""
        if not self.reload_wanted or self.probing or self.stopping:
            return
        self.reload_wanted = False  # changes from now on make another round
        self.probing = True
        module = self.pool.module
        probe = self._fork("probe", lambda _pid: "probe", None, lambda _id: reloader.probe(module))
        probe.deadline = time.monotonic() + self.config.boot_timeout_s  # an import that hangs is killed

    def _on_probe_exit(self, code: int) -> None:
        self.probing = False
        if self.stopping:
            return
        if code != EXIT_OK:
            logger.warning("not reloading: the handlers module does not import (above); the running "
                           "pools keep their code until the next change")
            return
        pools = [c for c in self._pools() if not c.retiring]
        logger.info("reloading: replacing %d pool process(es); they drain for up to %.0fs",
                    len(pools), self.pool.drain_timeout_s)
        deadline = time.monotonic() + self.pool.stop_deadline_s()
        for child in pools:
            metrics.POOL_RECYCLES.labels("reload").inc()
            self._terminate(child, deadline)  # retiring: _spawn_missing forks its replacement
        self.backoff.pop("pool", None)  # new code: a pool that failed to boot before may now

    # --- children ------------------------------------------------------------------------------

    def _pools(self) -> list[_Child]:
        return [c for c in self.children.values() if c.kind == "pool"]

    def _spawn_missing(self) -> None:
        if self.stopping:
            return
        if (self.listener is not None and not self._running("http") and self._may_respawn("http")):
            listener = self.listener
            self._fork("http", lambda _pid: "http", None,
                       lambda _id: _serve_http(self.pool.settings, listener, self.board))
        if (self.metrics_listener is not None and not self._running("metrics") and self._may_respawn("metrics")):
            probes = self.metrics_listener
            self._fork("metrics", lambda _pid: "metrics", None,
                       lambda _id: _serve_http(self.pool.settings, probes, self.board, probes_only=True))
        if self.config.reload_paths and not self._running("reloader") and self._may_respawn("reloader"):
            paths, changed_w = self.config.reload_paths, self._changed_w
            self._fork("reloader", lambda _pid: "reloader", None, lambda _id: reloader.watch(paths, changed_w))
        while sum(not c.retiring for c in self._pools()) < self._pool_count() and self._may_respawn("pool"):
            seq = self.ids.next_seq()  # the id names the pool's own pid: made on each side of the fork
            liveness = Liveness()
            shard = self._emptiest_shard()

            def run_pool(worker_id: str, liveness: Liveness = liveness, shard: int = shard) -> int:
                # A pool serves one shard of the namespace (all of it when there is one)...
                config = msgspec.structs.replace(self.pool, worker_id=worker_id,
                                                 settings=self.shard_settings[shard])
                # ...and task handles enqueue from its handlers into the whole namespace.
                default_client.configure(settings=self.pool.settings)
                return worker.main(config, liveness, self.board)

            self._fork("pool", functools.partial(self.ids.make, seq), liveness, run_pool).shard = shard

    @property
    def shard_settings(self) -> list[Settings]:
        return shard_settings(self.pool.settings)

    def _pool_count(self) -> int:
        """Every shard gets a pool process at least: a shard no pool serves would never run its
        jobs."""
        return max(self.config.processes, len(self.shard_settings))

    def _emptiest_shard(self) -> int:
        serving = collections.Counter(c.shard for c in self._pools() if not c.retiring)
        return min(range(len(self.shard_settings)), key=lambda shard: serving[shard])

    def _running(self, kind: str) -> bool:
        return any(c.kind == kind for c in self.children.values())

    def _may_respawn(self, kind: str) -> bool:
        return time.monotonic() >= self.backoff.get(kind, (0.0, 0.0))[1]

    def _fork(self, kind: str, name: Callable[[int], str], liveness: Liveness | None,
              target: Callable[[str], int]) -> _Child:
        if threading.active_count() > 1:
            logger.warning("forking with %d threads alive", threading.active_count())
        # Stop signals are held across the fork: one that reaches the child before it has reset
        # the supervisor's handlers (which only record) would otherwise be lost, and the child
        # would run on until the drain deadline. Held, it is delivered once the child is itself.
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_ACROSS_FORK)
        pid = os.fork()
        if pid == 0:
            code = EXIT_FORCED
            try:
                self._become_child(kind)
                signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
                if kind in _TRACED_KINDS:  # here, after the fork: the exporter holds a thread
                    trace_export.start(kind)
                code = target(name(os.getpid()))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else EXIT_FORCED
            except BaseException:
                logger.exception("%s process failed", kind)
            finally:
                trace_export.stop()  # os._exit below would drop the spans still buffered
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        child = self.children[pid] = _Child(pid, kind, name(pid), liveness)
        logger.log(logging.DEBUG if kind == "release" else logging.INFO, "started %s process %s (pid %d)",
                   kind, child.worker_id, pid)
        return child

    def _become_child(self, kind: str) -> None:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGTSTP, signal.SIGCONT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._changed_r >= 0:
            os.close(self._changed_r)
            if kind != "reloader":
                os.close(self._changed_w)
        if self.embedded is not None:
            self.embedded.after_fork()  # a user of the embedded Redis, not its owner
        os.setpgid(0, 0)  # out of the terminal's process group: only the supervisor gets Ctrl-C
        if sys.platform.startswith("linux"):  # die with the supervisor, even if it is SIGKILLed
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(EXIT_FORCED)
        for owner, sock in (("http", self.listener), ("metrics", self.metrics_listener)):
            if sock is not None and kind != owner:
                sock.close()
        for other in self.children.values():
            if other.liveness is not None:
                other.liveness.close()

    def _reap(self) -> None:
        # Only our own pids: the embedded Redis is a child too, and belongs to its Popen object.
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._on_exit(self.children.pop(pid), status)

    def _on_exit(self, child: _Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if child.kind == "release":
            metrics.mark_process_dead(child.pid)
            self._on_release_exit(child, code)
            return
        if child.kind == "probe":
            metrics.mark_process_dead(child.pid)
            self._on_probe_exit(code)
            return
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        level = logging.INFO if code == 0 or child.kill_reason == "shutdown" else logging.WARNING
        logger.log(level, "%s process %s (pid %d) ended: %s", child.kind, child.worker_id, child.pid, how)
        record = child.liveness.jobs.read() if child.liveness is not None else None
        if child.liveness is not None:
            child.liveness.close()
        metrics.mark_process_dead(child.pid)
        if child.kind == "pool":
            if child.kill_reason in ("stuck", "unresponsive") or child.stop_reason == "stuck" or (
                child.kill_reason is None and child.deadline is None and code not in (0, EXIT_BOOT_ERROR)
            ):  # not asked to stop, yet it ended: unplanned
                metrics.POOL_RESTARTS.labels(child.stop_reason or child.kill_reason or "crashed").inc()
            self._release(child.worker_id, crashed=code != 0 and child.kill_reason in (None, "unresponsive"),
                          record=record)
        if code == EXIT_BOOT_ERROR and self.config.reload_paths and child.kind == "pool" and not self.stopping:
            # Developing: the module is mid-edit. Retry with backoff; the next change retries at once.
            backoff_s = min(max(0.5, self.backoff.get("pool", (0.0, 0.0))[0] * 2), MAX_BACKOFF_S)
            self.backoff["pool"] = (backoff_s, time.monotonic() + backoff_s)
            logger.warning("pool process could not boot (above): retrying in %.1fs, or at the next change", backoff_s)
        elif code == EXIT_BOOT_ERROR:
            logger.critical("%s process could not boot (see the error above): stopping", child.kind)
            self.exit_code = EXIT_BOOT_ERROR
            if not self.stopping:
                self._begin_stop("boot error")
        elif (code != 0 or child.kind != "pool") and not self.stopping and (
            time.monotonic() - child.started < MIN_UPTIME_S
        ):  # an HTTP process is never meant to end by itself, even with code 0
            backoff_s = min(max(0.5, self.backoff.get(child.kind, (0.0, 0.0))[0] * 2), MAX_BACKOFF_S)
            self.backoff[child.kind] = (backoff_s, time.monotonic() + backoff_s)
            logger.warning("%s process died right after starting: respawning in %.1fs", child.kind, backoff_s)
        elif code == 0 or time.monotonic() - child.started >= MIN_UPTIME_S:
            self.backoff.pop(child.kind, None)

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.kill_reason is not None:
                continue
            if child.deadline is not None and now > child.deadline:
                logger.warning("%s process %s did not stop in time: killing it", child.kind, child.worker_id)
                self._kill(child, "shutdown")
            elif child.liveness is not None:
                self._check_pool(child, now)
        if self.stopping and not self._pools():
            for child in self.children.values():  # the HTTP process goes last
                if child.kind != "release":  # those end by themselves, bounded by their timeout
                    self._terminate(child, now + HTTP_STOP_S)

    def _check_pool(self, child: _Child, now: float) -> None:
        assert child.liveness is not None
        beat = child.liveness.read()
        if beat is None:
            return
        if beat.phase is Phase.STUCK:
            if child.deadline is None:  # its other jobs did nothing wrong: they get the drain grace
                logger.warning("pool %s has a handler that ignored its timeout: replacing it", child.worker_id)
                child.stop_reason = "stuck"
                self._terminate(child, now + self.pool.stop_deadline_s())
        elif beat.phase is Phase.BOOT and now - child.started > self.config.boot_timeout_s:
            logger.warning("pool %s did not boot in %.0fs: killing it", child.worker_id, self.config.boot_timeout_s)
            self._kill(child, "unresponsive")
        elif beat.phase is not Phase.BOOT and now - beat.at_monotonic > self.config.liveness_timeout_s:
            logger.warning("pool %s unresponsive for %.0fs (its event loop is blocked): killing it",
                           child.worker_id, now - beat.at_monotonic)
            self._kill(child, "unresponsive")
        elif beat.phase is Phase.DRAINING:
            child.retiring = True  # recycling itself (job limit, terminate directive): replace it now
        elif self.config.max_memory_mb and not self.stopping and _rss_mb(child.pid) > self.config.max_memory_mb:
            logger.info("pool %s is above %d MB: recycling it", child.worker_id, self.config.max_memory_mb)
            metrics.POOL_RECYCLES.labels("max_memory").inc()
            self._terminate(child, now + self.pool.stop_deadline_s())

    # --- job release ---------------------------------------------------------------------------

    def _release(self, worker_id: str, *, crashed: bool, record: RunSnapshot | None) -> None:
        if crashed and record is None:
            logger.warning("the run record of %s cannot be read: its jobs are all suspects", worker_id)
        self.pending_releases.append(_Release(worker_id, crashed, record))

    def _run_releases(self) -> None:
        """Fork a release process for each pending release that is due (one at a time per pool)."""
        now = time.monotonic()
        running = {c.release.worker_id for c in self.children.values() if c.release is not None}
        for pending in self.pending_releases:
            if pending.worker_id in running or pending.due > now:
                continue
            if self.stopping and not self._releases_left():
                break
            pending.tries += 1
            child = self._fork("release", functools.partial(_release_name, pending), None,
                               functools.partial(_release_target, self.pool.settings, pending))
            child.release = pending

    def _on_release_exit(self, child: _Child, code: int) -> None:
        pending = child.release
        if pending is None:  # the recovery of an earlier run's pools
            if code != 0:
                logger.warning("the recovery of an earlier run's pools did not finish (exit %d)", code)
            return
        if code == 0:
            self.pending_releases.remove(pending)
            return
        delay_s = min(0.5 * 2 ** (pending.tries - 1), MAX_BACKOFF_S)
        pending.due = time.monotonic() + delay_s
        logger.warning("could not release the jobs of %s yet (try %d); retrying in %.1fs",
                       pending.worker_id, pending.tries, delay_s)

    def _releases_left(self) -> bool:
        """At a stop: pending releases are still tried, for a bound once the pools are gone."""
        if not self.pending_releases:
            return False
        if self._pools():
            return True
        now = time.monotonic()
        if self.pools_gone_at is None:
            self.pools_gone_at = now
        if now - self.pools_gone_at <= RELEASE_STOP_GRACE_S:
            return True
        for pending in self.pending_releases:
            if not any(c.release is pending for c in self.children.values()):
                logger.warning("the jobs of %s were not handed back: the next start does it", pending.worker_id)
        self.pending_releases = [p for p in self.pending_releases
                                 if any(c.release is p for c in self.children.values())]
        return False

    def _fork_recovery(self) -> None:
        """The jobs of this host's pools of an earlier run that are gone go back at once."""
        host = self.ids.host
        self._fork("release", lambda _pid: "recovery", None, lambda _id: recovery.recover(self.pool.settings, host))

    # --- the embedded Redis ----------------------------------------------------------------------

    def _watch_redis(self) -> None:
        if self.embedded is None or self.redis_lost:
            return
        alive, self.redis_down_since = self.embedded.health()
        if not alive:
            self.redis_lost = True
            logger.critical("the embedded Redis died and could not be restarted: stopping")
            self.exit_code = self.exit_code or EXIT_REDIS_LOST
            if not self.stopping:
                self._begin_stop("embedded Redis lost")

    def _tell_systemd(self) -> None:
        """READY=1 once every pool has booted (the first time only), and the watchdog ping (not
        while the embedded Redis has been down for long: the service manager then restarts us)."""
        down = self.redis_down_since is not None and time.monotonic() - self.redis_down_since > REDIS_DOWN_PING_S
        if (down or self.redis_lost) != self.pings_withheld:
            self.pings_withheld = down or self.redis_lost
            if self.notifier.interval_s is not None:
                logger.warning("embedded Redis %s: watchdog pings %s", *(
                    ("down", "withheld") if self.pings_withheld else ("back", "resumed")))
        if not self.pings_withheld:
            self.notifier.watchdog()
        if self.stopping or not self.notifier.enabled or self.notifier.ready_sent:
            return
        beats = [c.liveness.read() for c in self._pools() if c.liveness is not None]
        up = sum(beat is not None and beat.phase is Phase.READY for beat in beats)
        if up >= self._pool_count():
            self.notifier.ready(f"{up} pool process(es) ready")

    def _cleanup(self) -> None:
        for child in self.children.values():
            self._kill(child, "shutdown")
        for pid in list(self.children):
            _, status = os.waitpid(pid, 0)
            self._on_exit(self.children.pop(pid), status)
        for pending in self.pending_releases:  # the loop is over: nothing else to serve meanwhile
            if _release_jobs(self.pool.settings, pending) != EXIT_OK:
                logger.warning("the jobs of %s were not handed back: the next start does it", pending.worker_id)
        self.pending_releases = []
        for sock in (self.listener, self.metrics_listener):
            if sock is not None:
                sock.close()
        if self.embedded is not None:
            self.embedded.stop()
        path, created = self.metrics_dir
        metrics.disable_multiprocess(path, created=created)
        signal.set_wakeup_fd(-1)
        for fd in (self._changed_r, self._changed_w):
            if fd >= 0:
                os.close(fd)


def _release_name(pending: _Release, _pid: int) -> str:
    return f"release:{pending.worker_id}"


def _release_target(settings: Settings, pending: _Release, _child_id: str) -> int:
    return _release_jobs(settings, pending)


def _release_jobs(settings: Settings, pending: _Release) -> int:
    """In a release process: hand back the jobs of one ended pool; the exit code says if it did."""
    record = pending.record
    try:
        ids = release_worker_blocking(
            settings, pending.worker_id, crashed=pending.crashed,
            running=record.running if record is not None else None,
            settling=record.settling if record is not None else (), timeout_s=RELEASE_TIMEOUT_S,
        )
    except Exception as err:
        logger.warning("could not release the jobs of %s: %s", pending.worker_id, err)
        return EXIT_FORCED
    if ids:
        logger.warning("%s the %d job(s) of %s: %s", "failed (worker_lost)" if pending.crashed else "released",
                       len(ids), pending.worker_id, ", ".join(ids))
    return EXIT_OK


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 1_048_576
    except psutil.Error:
        return 0.0


def _serve_http(settings: Settings, listener: socket.socket, board: Board, *, probes_only: bool = False) -> int:
    """The HTTP child: the broker endpoint and the scheduler loops on the inherited socket (or,
    `probes_only`, the /metrics, /health and /ready endpoint of ``--metrics-port``)."""
    # uvicorn re-raises the signal it stopped on; ignored, the process exits with code 0.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return serve_socket(settings, listener, board=board, probes_only=probes_only)
