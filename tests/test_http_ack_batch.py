"""The batch ack of HTTP workers (POST /ojs/v1/workers/ack/batch) on a real ojs-server: each item
settled with the single ack's fencing, one item's conflict never failing the others, and bad
input refused whole, before anything is acknowledged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import integrity_problems

BATCH = "/ojs/v1/workers/ack/batch"


@pytest.fixture
def http(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    server = BrokerProcess(redis_url, tmp_path, env={"OJS_MAX_BATCH_SIZE": "5"})
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        print(server.log_tail())
        server.stop()
    assert integrity_problems(redis_url) == []


def enqueue(http: httpx.Client, n: int, *, queue: str = "batch", tenant: str | None = None) -> list[str]:
    headers = {"X-OJS-Tenant": tenant} if tenant else {}
    ids = []
    for i in range(n):
        reply = http.post("/ojs/v1/jobs", json={"type": "t", "args": [i], "options": {"queue": queue}}, headers=headers)
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["job"]["id"])
    return ids


def fetch(http: httpx.Client, count: int, *, worker_id: str = "w-1", queue: str = "batch",
          tenant: str | None = None) -> list[dict[str, Any]]:
    headers = {"X-OJS-Tenant": tenant} if tenant else {}
    reply = http.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": count, "worker_id": worker_id},
                      headers=headers)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["jobs"])


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(http.get(f"/ojs/v1/jobs/{job_id}").json()["job"])


def test_each_item_gets_its_own_outcome_and_a_conflict_fails_no_other(http: httpx.Client) -> None:
    ids = enqueue(http, 4)
    a, b, c = fetch(http, 3)
    waiting = ids[3]  # never fetched: available, so its ack is a conflict
    reply = http.post(BATCH, json={"acks": [
        {"job_id": a["id"], "worker_id": "w-1", "attempt": a["attempt"], "result": {"n": 1}},
        {"job_id": b["id"], "worker_id": "w-other"},  # another worker's claim: stale
        {"job_id": waiting},
        {"job_id": "019539a4-b68c-7def-8000-000000000000"},  # no such job
        {"job_id": c["id"]},
    ]})
    assert reply.status_code == 207, reply.text
    body = reply.json()
    assert (body["total"], body["succeeded"], body["failed"]) == (5, 2, 3)
    items = body["items"]
    assert [item["index"] for item in items] == [0, 1, 2, 3, 4]
    assert [item["status"] for item in items] == ["acknowledged", "failed", "failed", "failed", "acknowledged"]
    assert items[0]["state"] == "completed" and isinstance(items[0]["completed_at"], str)
    assert items[1]["error"]["code"] == "conflict" and "stale" in items[1]["error"]["message"]
    assert items[2]["error"]["code"] == "conflict" and items[2]["error"]["details"] == {"state": "available"}
    assert items[3]["error"]["code"] == "not_found"
    assert job(http, a["id"])["state"] == "completed" and job(http, a["id"])["result"] == {"n": 1}
    assert job(http, c["id"])["state"] == "completed"
    assert job(http, b["id"])["state"] == "active"  # still its worker's to settle
    assert job(http, waiting)["state"] == "available"
    # The single ack answers the stale item as the batch did: same fencing.
    single = http.post("/ojs/v1/workers/ack", json={"job_id": b["id"], "worker_id": "w-other"})
    assert single.status_code == 409 and single.json()["error"]["message"] == items[1]["error"]["message"]
    assert http.post(BATCH, json={"acks": [{"job_id": b["id"], "worker_id": "w-1"}]}).status_code == 200
    assert fetch(http, 1) != []  # the waiting one, settled below so the store ends consistent
    assert http.post(BATCH, json={"acks": [{"job_id": waiting}]}).status_code == 200


def test_a_job_named_twice_is_acknowledged_once(http: httpx.Client) -> None:
    enqueue(http, 1)
    (only,) = fetch(http, 1)
    reply = http.post(BATCH, json={"acks": [{"job_id": only["id"]}, {"job_id": only["id"]}]})
    assert reply.status_code == 207, reply.text
    first, second = reply.json()["items"]
    assert first["status"] == "acknowledged"
    assert second["status"] == "failed" and second["error"]["details"] == {"state": "completed"}


def test_a_batch_where_every_item_fails_is_422(http: httpx.Client) -> None:
    (waiting,) = enqueue(http, 1)
    reply = http.post(BATCH, json={"acks": [{"job_id": waiting}]})
    assert reply.status_code == 422, reply.text
    assert reply.json()["failed"] == 1 and reply.json()["items"][0]["error"]["code"] == "conflict"
    fetch(http, 1)
    assert http.post(BATCH, json={"acks": [{"job_id": waiting}]}).status_code == 200


BAD_BATCHES: list[tuple[str, Any, int, str]] = [
    ("empty", {"acks": []}, 400, "invalid_request"),
    ("too many", {"acks": [{"job_id": "x"}] * 6}, 413, "batch_size_exceeded"),  # the server's max is 5
    ("an item without job_id", {"acks": [{"job_id": "PLACEHOLDER"}, {"result": 1}]}, 400, "invalid_request"),
    ("attempt 0", {"acks": [{"job_id": "PLACEHOLDER", "attempt": 0}]}, 400, "invalid_request"),
    ("a single ack's body", {"job_id": "PLACEHOLDER"}, 400, "invalid_request"),
    ("acks not a list", {"acks": {"job_id": "PLACEHOLDER"}}, 400, "invalid_request"),
    ("not an object", [1, 2], 400, "invalid_request"),
]


def test_bad_input_is_refused_whole_before_anything_is_acknowledged(http: httpx.Client) -> None:
    enqueue(http, 1)
    (active,) = fetch(http, 1)
    for name, body, status, code in BAD_BATCHES:
        text = httpx.Request("POST", "/", json=body).content.replace(b"PLACEHOLDER", active["id"].encode())
        reply = http.post(BATCH, content=text, headers={"Content-Type": "application/json"})
        assert reply.status_code == status, (name, reply.text)
        error = reply.json()["error"]
        assert error["code"] == code and error["message"] and error["request_id"], name
        if status == 413:
            assert error["details"] == {"max_batch_size": 5} and reply.headers["x-ojs-max-batch-size"] == "5"
        assert job(http, active["id"])["state"] == "active", name
    assert http.post(BATCH, json={"acks": [{"job_id": active["id"]}]}).status_code == 200


def test_a_tenant_acknowledges_only_its_own_jobs(http: httpx.Client) -> None:
    enqueue(http, 1, queue="mt", tenant="alpha")
    enqueue(http, 1, queue="mt", tenant="beta")
    (mine,) = fetch(http, 1, queue="mt", tenant="alpha")
    (theirs,) = fetch(http, 1, queue="mt", tenant="beta")
    reply = http.post(BATCH, json={"acks": [{"job_id": theirs["id"]}, {"job_id": mine["id"]}]},
                      headers={"X-OJS-Tenant": "alpha"})
    assert reply.status_code == 207, reply.text
    other, own = reply.json()["items"]
    assert other["status"] == "failed" and other["error"]["code"] == "not_found"
    assert own["status"] == "acknowledged"
    assert job(http, theirs["id"])["state"] == "active" and job(http, mine["id"])["state"] == "completed"
    assert http.post(BATCH, json={"acks": [{"job_id": theirs["id"]}]}, headers={"X-OJS-Tenant": "beta"}).status_code == 200
