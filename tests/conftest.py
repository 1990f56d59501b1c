"""Shared fixtures: one real Redis per test session, one flushed database per test.

No Redis mocks. When ``OJS_TEST_REDIS_URL`` is set, that server is used.
Otherwise an :class:`~runtime.embedded_redis.EmbeddedRedis` without persistence
is started once per session (per xdist worker). If no Redis can be reached or
started, the tests that need one are skipped locally and fail when ``CI`` is
set, so CI can never pass by skipping them.

Database map of the test server:

* 0: the default DB (``EmbeddedRedis.url``), left to ad-hoc and dev use;
* 1-7: ``DB_RESERVED_FOR_CONFORMANCE``;
* 8 and up: handed out by ``redis_url``, one per test, round-robin (on an external server,
  which xdist workers share, each worker round-robins over its own residue class of them).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest
import redis
from hypothesis import HealthCheck, settings

from runtime.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    ServerBinaryNotFoundError,
    find_server_binary,
    with_db,
)
from tests.fixtures.ports import worker_slot
from tests.fixtures.procs import Runtime, Start
from tests.fixtures.tcp_proxy import FaultProxy

# No time limits on examples: a property test checks what its examples compute, never how fast
# (a test that sets its own deadline keeps it). Tests run side by side under `make test`, and on
# a loaded machine an example's wall time says nothing about the code.
settings.register_profile("ojs-tests", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ojs-tests")

# These DBs are for the conformance level servers: each level's server gets its
# own DB, so it never shares a keyspace with a unit test. redis_url never hands
# them out.
DB_RESERVED_FOR_CONFORMANCE = range(1, 8)
FIRST_TEST_DB = 8
# 56 DBs to rotate through, so a straggler from one test (a worker process
# still draining) writes into a DB that no other test will use for a while.
TEST_SERVER_DATABASES = 64
EXTERNAL_URL_ENV = "OJS_TEST_REDIS_URL"


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an explicit no (``""``, 0, false, no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail in CI, where a missing Redis is a broken pipeline."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


class RedisServer(Protocol):
    """What tests may rely on from ``redis_server``, embedded or external."""

    @property
    def url(self) -> str: ...

    @property
    def databases(self) -> int: ...

    def url_for_db(self, n: int) -> str: ...


@dataclass(frozen=True)
class ExternalRedis:
    """A server given by ``OJS_TEST_REDIS_URL``; the tests never start or stop it."""

    url: str
    databases: int

    def url_for_db(self, n: int) -> str:
        return with_db(self.url, n)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A fault-injection TCP proxy in front of this test's Redis DB (tests/fixtures/tcp_proxy.py)."""
    with FaultProxy(redis_url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis server: external if ``OJS_TEST_REDIS_URL`` is set, else embedded."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield _connect_external(external)
        return
    server = EmbeddedRedis(persistence=False, databases=TEST_SERVER_DATABASES)
    try:
        server.start()
    except EmbeddedRedisError as err:
        skip_or_fail(f"cannot start an embedded Redis: {err}")
    try:
        yield server
    finally:
        server.stop()


def _connect_external(url: str) -> ExternalRedis:
    """Check the external server answers and has room for the test DBs."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
        count = _database_count(client)
    except redis.RedisError as err:
        skip_or_fail(f"{EXTERNAL_URL_ENV}={url} is not usable: {err}")
    finally:
        client.close()
    if count <= FIRST_TEST_DB:
        pytest.fail(f"{EXTERNAL_URL_ENV} has {count} DBs; tests need more than {FIRST_TEST_DB}")
    return ExternalRedis(url=url, databases=count)


def _database_count(client: redis.Redis) -> int:
    """``CONFIG GET databases``, or Redis' default of 16 where CONFIG is forbidden."""
    try:
        reply: Any = client.config_get("databases")
    except redis.ResponseError:
        return 16
    return int(reply.get("databases") or reply.get(b"databases") or 16)


@pytest.fixture(scope="session")
def ojs_redis_url(redis_server: RedisServer) -> str:
    """The testing kit's real mode (``ojs_real``) runs on the session's server, not one of its
    own; each test is isolated by a key prefix of its own there."""
    return redis_server.url


@pytest.fixture(scope="session")
def _test_db_numbers(redis_server: RedisServer) -> Iterator[int]:
    """Endless round-robin over the DBs that tests may use (8 and up). Each xdist worker starts
    an embedded server of its own, but shares an external one: there every worker takes only
    its own residue class of those DBs, so two workers never share one."""
    index, count = worker_slot() if isinstance(redis_server, ExternalRedis) else (0, 1)
    mine = range(FIRST_TEST_DB + index, redis_server.databases, count)
    if not mine:
        pytest.fail(f"{EXTERNAL_URL_ENV} has too few DBs for {count} xdist workers")
    return itertools.cycle(mine)


@pytest.fixture
def redis_url(redis_server: RedisServer, _test_db_numbers: Iterator[int]) -> str:
    """URL of a DB reserved for this test, FLUSHDBed before it starts."""
    url = redis_server.url_for_db(next(_test_db_numbers))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on this test's DB, returning raw bytes, for inspection."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_embedded_redis() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory for private, not yet started servers; all are stopped after the test.

    For tests that need their own server process (restart, persistence, crash).
    Skips, or fails in CI, when no server binary exists.
    """
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    servers: list[EmbeddedRedis] = []

    def make(**kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


POOL_HANDLERS = "tests.fixtures.pool_handlers"


@pytest.fixture
def start(redis_url: str, tmp_path: Path) -> Iterator[Start]:
    """``start(*args, module=...)``: an ``ojs-run`` process against this test's Redis DB, serving
    the fixture handlers; stopped after the test, its log printed (pytest shows it on failure)."""
    started: list[Runtime] = []

    def go(*args: str, module: str = POOL_HANDLERS) -> Runtime:
        runtime = Runtime(redis_url, module, *args, log_path=tmp_path / f"ojs-run-{len(started)}.log")
        started.append(runtime)
        return runtime

    yield go
    for runtime in started:
        runtime.stop()
        print(f"--- {runtime.log_path.name}\n{runtime.log()}")


def in_xdist_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process (``-n N``), False in a plain run."""
    return hasattr(config, "workerinput")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a plain run, conformance tests go last: their suites run in background threads from
    the start of the session (see test_conformance_levels.py), so the rest of the tests overlap
    their minutes of waiting instead of queueing behind them.

    Under xdist (``make test``: ``--dist loadfile --no-loadscope-reorder``, each test module one
    unit, so a module's fixtures start in one worker only) the conformance tests are started
    lazily by the worker that gets their module; it goes first, then the modules marked long (a
    minute or more each, so none of them starts late and ends the run alone), then the modules
    with slow tests, so that the longest waits start early and short modules fill the gaps at the
    end (workers take modules in the order of their first test here)."""
    if not in_xdist_worker(config):
        items.sort(key=lambda item: item.get_closest_marker("conformance") is not None)
        return
    items.sort(key=lambda item: (item.get_closest_marker("conformance") is None,
                                 item.get_closest_marker("long") is None,
                                 item.get_closest_marker("slow") is None))
