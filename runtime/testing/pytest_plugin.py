"""pytest fixtures of the testing kit, registered through the ``pytest11`` entry point, so a
project that installs ojs-runtime gets them without any conftest:

``ojs_fake``, ``ojs_inline``, ``ojs_real``
    A test context in that mode (see :mod:`runtime.testing`), entered for the test and left
    after it: the real ``Client`` and the clock are restored whatever the test did.
``ojs_redis_url`` (session)
    The Redis real mode uses: ``--ojs-redis-url`` when given, else an embedded Redis started
    for the session (per xdist worker). Override the fixture to use your own.
``ojs_key_prefix``
    The real-mode key prefix of this test: a new one per test, so tests that run at the same
    time on one Redis never see each other's jobs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime import testing
from runtime.testing.memory import MemoryContext
from runtime.testing.real import RealContext


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ojs", "ojs-runtime testing kit")
    group.addoption("--ojs-redis-url", default=None, metavar="URL",
                    help="Redis for the ojs_real fixture (default: an embedded Redis per session)")


@pytest.fixture(scope="session")
def ojs_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    given = request.config.getoption("ojs_redis_url")
    if given:
        yield given
        return
    from runtime.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(persistence=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def ojs_key_prefix() -> str:
    return testing.unique_prefix()


@pytest.fixture
def ojs_fake() -> Iterator[MemoryContext]:
    with testing.fake_mode() as context:
        yield context


@pytest.fixture
def ojs_inline() -> Iterator[MemoryContext]:
    with testing.inline_mode() as context:
        yield context


@pytest.fixture
def ojs_real(ojs_redis_url: str, ojs_key_prefix: str) -> Iterator[RealContext]:
    with testing.real_mode(ojs_redis_url, key_prefix=ojs_key_prefix) as context:
        yield context
