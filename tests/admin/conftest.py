"""Admin API fixtures: a real `ojs-server` process on this test's Redis DB, and an HTTP client
with the small helpers the tests share. Every test ends with the store consistent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import integrity_problems


class Api:
    """An HTTP client on one server, with the data-plane steps the admin tests set up with."""

    def __init__(self, server: BrokerProcess, *, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.url, headers=headers, timeout=10)
        self.server = server

    def enqueue(self, job_type: str, args: list[Any] | None = None, *, meta: dict[str, Any] | None = None,
                **options: Any) -> str:
        body = {"type": job_type, "args": args or [], "options": options, **({"meta": meta} if meta else {})}
        reply = self.http.post("/ojs/v1/jobs", json=body)
        assert reply.status_code == 201, reply.text
        return str(reply.json()["job"]["id"])

    def fetch(self, queue: str, count: int = 1, worker_id: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"queues": [queue], "count": count}
        if worker_id:
            body["worker_id"] = worker_id
        reply = self.http.post("/ojs/v1/workers/fetch", json=body)
        assert reply.status_code == 200, reply.text
        return list(reply.json()["jobs"])

    def complete(self, queue: str, count: int) -> list[str]:
        jobs = self.fetch(queue, count)
        for job in jobs:
            assert self.http.post("/ojs/v1/workers/ack", json={"job_id": job["id"]}).status_code == 200
        return [job["id"] for job in jobs]

    def fail(self, queue: str, count: int, error_type: str = "boom") -> list[str]:
        jobs = self.fetch(queue, count)
        for job in jobs:
            error = {"code": error_type, "type": error_type, "message": f"{error_type} happened", "retryable": False}
            reply = self.http.post("/ojs/v1/workers/nack", json={"job_id": job["id"], "error": error})
            assert reply.status_code == 200, reply.text
        return [job["id"] for job in jobs]

    def state(self, job_id: str) -> str | None:
        reply = self.http.get(f"/ojs/v1/jobs/{job_id}")
        return None if reply.status_code == 404 else str(reply.json()["job"]["state"])


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's extra environment: parametrize `server_env` indirectly to set it."""
    return dict(getattr(request, "param", None) or {})


@pytest.fixture
def server(redis_url: str, tmp_path: Path, server_env: dict[str, str]) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(redis_url, tmp_path, env=server_env)
    try:
        proc.wait_ready()
        yield proc
    finally:
        print(proc.log_tail())  # shown when the test failed
        proc.stop()


@pytest.fixture
def api(server: BrokerProcess, redis_url: str, server_env: dict[str, str]) -> Iterator[Api]:
    client = Api(server, token=server_env.get("OJS_API_KEY"))
    try:
        yield client
    finally:
        client.http.close()
    assert integrity_problems(redis_url) == []


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def assert_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    """A 4xx with the OJS error body."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] and error["message"], error
    return dict(error)
