"""Real mode runs on the session's Redis (tests/conftest.py), each test under a prefix of its own."""

from __future__ import annotations

import pytest

from tests.conftest import RedisServer


@pytest.fixture(scope="session")
def ojs_redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
