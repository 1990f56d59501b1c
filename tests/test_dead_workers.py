"""Dead-worker detection over HTTP (worker protocol, section 10): a worker that stops sending
heartbeats loses its jobs (requeued as a worker loss) and its registry entry, after a number of
missed intervals of its own; live ones keep theirs. Real servers with short intervals; every
wait is a condition on the Redis state with a deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from runtime.broker.keys import Keys
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import wait_until

KEYS = Keys()
SHORT = {"OJS_WORKER_HEARTBEAT_INTERVAL_MS": "200", "OJS_WORKER_MISSED_HEARTBEATS": "3"}  # dead after 0.6 s


@pytest.fixture
def servers(redis_url: str, tmp_path: Path) -> Iterator[list[BrokerProcess]]:
    started = [BrokerProcess(redis_url, tmp_path, env=SHORT) for _ in range(2)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            print(server.log_tail())  # shown when the test failed
            server.stop()


def _claim(base: str, worker_id: str, queue: str, **beat: object) -> str:
    """Enqueue a job, fetch it as `worker_id` (default lease: 30 minutes), heartbeat once."""
    response = httpx.post(f"{base}/ojs/v1/jobs", json={"type": "dw.job", "args": [], "options": {"queue": queue}})
    assert response.status_code == 201, response.text
    fetched = httpx.post(f"{base}/ojs/v1/workers/fetch", json={"queues": [queue], "worker_id": worker_id}).json()
    (job,) = fetched["jobs"]
    beat_body = {"worker_id": worker_id, "active_jobs": [job["id"]], **beat}
    assert httpx.post(f"{base}/ojs/v1/workers/heartbeat", json=beat_body).status_code == 200
    return str(job["id"])


def _field(client: redis.Redis, job_id: str, name: str) -> str | None:
    value = client.hget(KEYS.job(job_id), name)
    return value.decode() if value is not None else None


def test_silent_worker_loses_its_jobs_and_record_while_a_slow_one_keeps_them(
    servers: list[BrokerProcess], redis_client: redis.Redis,
) -> None:
    base = servers[0].url
    # Given: a worker beating at the server's interval and one beating once a minute; both go silent
    silent_job = _claim(base, "w-silent", "dw-a")
    slow_job = _claim(base, "w-slow", "dw-b", heartbeat_interval_ms=60_000)
    # When: more than three of the server's intervals pass without a beat
    wait_until(lambda: _field(redis_client, silent_job, "state") == "available", what="the silent worker's job requeued")
    # Then: the silent one's job is back, counted as a worker loss; its record is gone
    assert not redis_client.exists(KEYS.worker("w-silent"))
    assert redis_client.zscore(KEYS.workers, "w-silent") is None
    error = json.loads(_field(redis_client, silent_job, "error") or "{}")
    assert (error["type"], _field(redis_client, silent_job, "lost"), _field(redis_client, silent_job, "attempt")) == (
        "worker_death", "1", "1")
    # And the slow one, judged by its own interval, keeps its job and its record
    assert _field(redis_client, slow_job, "state") == "active"
    assert redis_client.exists(KEYS.worker("w-slow"))
    # And the silent worker's late ack is refused; another worker runs the job
    late = httpx.post(f"{base}/ojs/v1/workers/ack", json={"job_id": silent_job, "worker_id": "w-silent"})
    assert late.status_code == 409, late.text
    (again,) = httpx.post(f"{base}/ojs/v1/workers/fetch", json={"queues": ["dw-a"], "worker_id": "w-new"}).json()["jobs"]
    assert again["id"] == silent_job
    assert httpx.post(f"{base}/ojs/v1/workers/ack", json={"job_id": silent_job, "worker_id": "w-new"}).status_code == 200


def test_two_servers_requeue_each_silent_worker_job_once(
    servers: list[BrokerProcess], redis_client: redis.Redis,
) -> None:
    # Given: twenty workers, each holding one job, all silent after one beat; two servers watch
    jobs = [_claim(servers[n % 2].url, f"w-{n}", f"dw-{n}") for n in range(20)]
    # When
    wait_until(lambda: all(_field(redis_client, j, "state") == "available" for j in jobs),
               what="every silent worker's job requeued")
    # Then: each job was failed once (one worker loss, one error), and every record is gone
    assert [(_field(redis_client, j, "lost"), _field(redis_client, j, "nerr")) for j in jobs] == [("1", "1")] * 20
    assert redis_client.zcard(KEYS.workers) == 0
    assert not any(redis_client.exists(KEYS.worker(f"w-{n}")) for n in range(20))
