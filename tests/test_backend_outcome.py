"""A 503 says `retryable: true` only when the command surely did not run.

Real servers (`python -m runtime`): one whose Redis refuses connections (nothing can have run),
and one behind a TCP proxy that forwards an enqueue to Redis and then drops the connection before
the reply (the job exists, the outcome is unknown to the server, so a retry could duplicate it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from runtime.broker.keys import Keys
from runtime.broker.scripts import LIBRARY_CODE, function_name
from runtime.ids import uuid7
from tests.fixtures.broker_process import BrokerProcess, free_port, serving
from tests.fixtures.procs import wait_until
from tests.fixtures.tcp_proxy import FaultProxy

ENQUEUE_FUNCTION = function_name("enqueue").encode()
KEYS = Keys()


@pytest.fixture
def server_without_redis(tmp_path: Path) -> Iterator[BrokerProcess]:
    # Nothing listens there: the server answers HTTP, its health says 503.
    with serving(f"redis://127.0.0.1:{free_port()}/0", tmp_path, healthy=False) as server:
        yield server


@pytest.fixture
def server_behind_proxy(proxy: FaultProxy, tmp_path: Path) -> Iterator[BrokerProcess]:
    with serving(proxy.url(), tmp_path) as server:
        yield server


def _job(job_id: str) -> dict[str, object]:
    return {"id": job_id, "type": "outcome.test", "args": [1]}


def test_refused_connection_is_a_retryable_503(server_without_redis: BrokerProcess) -> None:
    # When: an enqueue, and a read, while Redis refuses connections
    enqueue = httpx.post(f"{server_without_redis.url}/ojs/v1/jobs", json=_job(str(uuid7())), timeout=30)
    read = httpx.get(f"{server_without_redis.url}/ojs/v1/jobs/{uuid7()}", timeout=30)
    # Then: both are safe to repeat, and say so
    for response in (enqueue, read):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert (error["code"], error["retryable"]) == ("backend_unavailable", True), error


def test_reply_lost_after_the_enqueue_was_sent_is_not_retryable(
    server_behind_proxy: BrokerProcess, proxy: FaultProxy, redis_client: redis.Redis,
) -> None:
    # Given: the next enqueue script call reaches Redis (loaded, so that it runs), and its
    # connection is dropped before the reply
    redis_client.function_load(LIBRARY_CODE, replace=True)
    job_id = str(uuid7())
    proxy.arm(ENQUEUE_FUNCTION)
    # When
    response = httpx.post(f"{server_behind_proxy.url}/ojs/v1/jobs", json=_job(job_id), timeout=30)
    # Then: a 503 that does not invite a blind retry, and says the outcome is unknown
    assert proxy.dropped.is_set()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("backend_unavailable", False), error
    assert "unknown" in error["message"], error
    # And indeed the job was created
    wait_until(lambda: redis_client.exists(KEYS.job(job_id)), what="the enqueued job in Redis")
    # And repeating it with the same client-chosen id cannot duplicate it: the id is taken
    again = httpx.post(f"{server_behind_proxy.url}/ojs/v1/jobs", json=_job(job_id), timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate", again.text
