"""The requests the official OJS SDKs (Python, JavaScript) and the reference server's README send,
exactly as they send them, against a real `ojs-server` process; and the response fields each of
them parses. CI has neither SDK installed, so these tests speak HTTP as the SDKs do."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.config import Settings
from tests.fixtures.broker_process import serving
from tests.fixtures.procs import integrity_problems

# The reference README's cron example, verbatim: the queue at the top level, no args.
README_CRON = {"name": "daily-report", "schedule": "0 9 * * *", "timezone": "America/New_York",
               "type": "reports.generate", "queue": "reports"}
# What the Python SDK's register_cron_job sends (its options gather queue, priority, tags).
PYTHON_SDK_CRON = {"name": "nightly-sync", "cron": "0 3 * * *", "type": "sync.run", "args": ["full"],
                   "timezone": "UTC", "meta": {"owner": "data"},
                   "options": {"queue": "sync", "priority": 5, "tags": ["nightly"]}}


@pytest.fixture
def http(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    with serving(redis_url, tmp_path) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
    assert integrity_problems(redis_url) == []


def enqueue(http: httpx.Client, queue: str, job_type: str = "client.job") -> str:
    reply = http.post("/ojs/v1/jobs", json={"type": job_type, "args": [], "options": {"queue": queue}})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["job"]["id"])


def claim(http: httpx.Client, queue: str, worker_id: str = "sdk-worker") -> dict[str, Any]:
    reply = http.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": 1, "worker_id": worker_id,
                                                      "visibility_timeout_ms": 30000})
    assert reply.status_code == 200, reply.text
    (job,) = reply.json()["jobs"]
    return dict(job)


def fire_due_crons(redis_url: str, name: str) -> int:
    """One cron tick at the cron's next fire time, as the server's scheduler will run it then."""
    async def go() -> int:
        client = Redis.from_url(redis_url)
        broker = Broker(client, Settings(redis_url=redis_url))
        try:
            next_ms = await client.zscore(broker.keys.cron_next, name)
            assert next_ms is not None, f"cron {name} is not scheduled"
            return await Crons(broker).tick(now_ms=int(next_ms))
        finally:
            await broker.close()
            await client.aclose()

    return asyncio.run(go())


# --- a cron's top-level queue ---------------------------------------------------------------------

def test_cron_with_top_level_queue_puts_its_jobs_in_that_queue(http: httpx.Client, redis_url: str) -> None:
    # Given: the README's cron, whose queue is a top-level field
    reply = http.post("/ojs/v1/cron", json=README_CRON)
    assert reply.status_code == 201, reply.text
    # When: it fires
    assert fire_due_crons(redis_url, "daily-report") == 1
    # Then: its job is in `reports`, and nothing in `default`
    assert http.post("/ojs/v1/workers/fetch", json={"queues": ["default"]}).json()["jobs"] == []
    job = claim(http, "reports")
    assert job["type"] == "reports.generate" and job["queue"] == "reports"
    # and the registration shows where its jobs go
    template = http.get("/ojs/v1/cron/daily-report").json()["cron"]["job_template"]
    assert template["options"]["queue"] == "reports" and template["args"] == []


def test_cron_flat_job_fields_are_honoured_and_conflicting_ones_refused(http: httpx.Client, redis_url: str) -> None:
    # A top-level priority is the job's priority, like on an enqueue
    reply = http.post("/ojs/v1/cron", json={**README_CRON, "name": "prio", "priority": 7})
    assert reply.status_code == 201, reply.text
    assert reply.json()["cron_job"]["options"] == {"queue": "reports", "priority": 7}
    assert fire_due_crons(redis_url, "prio") == 1
    assert claim(http, "reports")["priority"] == 7
    # A queue given twice, differently, is not silently resolved
    twice = {**README_CRON, "name": "twice", "options": {"queue": "other"}}
    refused = http.post("/ojs/v1/cron", json=twice)
    assert refused.status_code == 400, refused.text
    assert "queue" in refused.json()["error"]["message"]
    # Nor are job fields beside a job_template (one of them would be ignored)
    mixed = {"name": "mixed", "expression": "0 9 * * *", "queue": "reports",
             "job_template": {"type": "reports.generate", "args": []}}
    refused = http.post("/ojs/v1/cron", json=mixed)
    assert refused.status_code == 400, refused.text
    assert http.get("/ojs/v1/cron/twice").status_code == 404
    assert http.get("/ojs/v1/cron/mixed").status_code == 404


def test_cron_template_keeps_a_top_level_queue_too(http: httpx.Client, redis_url: str) -> None:
    body = {"name": "tmpl", "expression": "0 9 * * *",
            "job_template": {"type": "reports.generate", "queue": "reports"}}
    reply = http.post("/ojs/v1/cron", json=body)
    assert reply.status_code == 201, reply.text
    assert reply.json()["cron"]["job_template"]["options"]["queue"] == "reports"
    assert fire_due_crons(redis_url, "tmpl") == 1
    assert claim(http, "reports")["type"] == "reports.generate"


def test_cron_template_fields_of_the_wrong_type_are_a_400(http: httpx.Client) -> None:
    for template in ({"type": "reports.generate", "meta": ["not", "an", "object"]},
                     {"type": "reports.generate", "options": "reports"},
                     {"type": "reports.generate", "queue": 5}):
        reply = http.post("/ojs/v1/cron", json={"name": "typed", "expression": "0 9 * * *", "job_template": template})
        assert reply.status_code == 400, (template, reply.text)
        assert reply.json()["error"]["message"]
    assert http.get("/ojs/v1/cron/typed").status_code == 404


# --- progress as both SDKs send it ----------------------------------------------------------------

def test_progress_posted_to_workers_progress_as_the_sdks_send_it(http: httpx.Client) -> None:
    job_id = enqueue(http, "imports")
    claim(http, "imports")
    # The body both SDKs' report_progress / reportProgress send: a percentage 0-100
    body = {"job_id": job_id, "percentage": 47, "message": "Processed 47 rows", "data": {"rows": 47}}
    reply = http.post("/ojs/v1/workers/progress", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["progress"] == pytest.approx(0.47)
    shown = http.get(f"/ojs/v1/jobs/{job_id}/progress").json()
    assert shown["progress"] == pytest.approx(0.47)
    assert shown["message"] == "Processed 47 rows" and shown["data"] == {"rows": 47}
    # Out of range, or without a job: 400 with the error body
    for bad in ({"job_id": job_id, "percentage": 101}, {"percentage": 5}):
        refused = http.post("/ojs/v1/workers/progress", json=bad)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"]
    missing = http.post("/ojs/v1/workers/progress", json={"job_id": "0" * 8, "percentage": 5})
    assert missing.status_code == 404, missing.text


# --- response shapes both SDKs parse --------------------------------------------------------------

def test_queue_stats_answer_the_openapi_the_prose_and_both_sdks(http: httpx.Client) -> None:
    for _ in range(3):
        enqueue(http, "stats-q")
    claim(http, "stats-q")
    body = http.get("/ojs/v1/queues/stats-q/stats").json()
    # openapi (and the conformance suites): a `queue` object
    assert body["queue"]["name"] == "stats-q"
    assert (body["queue"]["available"], body["queue"]["active"], body["queue"]["paused"]) == (2, 1, False)
    # prose (and the Python SDK's QueueStats.from_dict): `status`, `stats`, `computed_at`
    assert body["status"] == "active" and body["computed_at"]
    assert (body["stats"]["available"], body["stats"]["active"], body["stats"]["scheduled"]) == (2, 1, 0)
    # the JavaScript SDK's QueueStats: the body itself, flat
    assert body["name"] == "stats-q"
    assert (body["available"], body["active"], body["completed"], body["paused"]) == (2, 1, 0, False)


def test_cron_responses_answer_the_openapi_the_prose_and_both_sdks(http: httpx.Client) -> None:
    reply = http.post("/ojs/v1/cron", json=PYTHON_SDK_CRON)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    # openapi: `cron` with expression and job_template
    assert body["cron"]["expression"] == "0 3 * * *"
    assert body["cron"]["job_template"] == {"type": "sync.run", "args": ["full"], "meta": {"owner": "data"},
                                            "options": {"queue": "sync", "priority": 5, "tags": ["nightly"]}}
    # prose (the JavaScript SDK reads `cron_job`): flat type, args, options, status
    flat = body["cron_job"]
    assert (flat["name"], flat["cron"], flat["type"], flat["args"]) == ("nightly-sync", "0 3 * * *", "sync.run", ["full"])
    assert flat["options"] == {"queue": "sync", "priority": 5, "tags": ["nightly"]}
    assert flat["meta"] == {"owner": "data"}
    assert flat["status"] == "active" and flat["next_run_at"] and flat["created_at"]
    # The list as both SDKs read it (`cron_jobs`, `pagination`), and as openapi has it (`crons`)
    listed = http.get("/ojs/v1/cron", params={"limit": 50, "offset": 0}).json()
    assert [c["type"] for c in listed["cron_jobs"]] == ["sync.run"]
    assert [c["job_template"]["type"] for c in listed["crons"]] == ["sync.run"]
    assert listed["pagination"]["total"] == 1 and listed["pagination"]["has_more"] is False
    # A disabled cron is shown so
    paused = http.patch("/ojs/v1/cron/nightly-sync", json={"enabled": False}).json()["cron_job"]
    assert (paused["enabled"], paused["status"]) == (False, "disabled")


def test_cron_list_pages_with_limit_and_offset(http: httpx.Client) -> None:
    for n in range(3):
        reply = http.post("/ojs/v1/cron", json={**PYTHON_SDK_CRON, "name": f"c{n}"})
        assert reply.status_code == 201, reply.text
    page = http.get("/ojs/v1/cron", params={"limit": 2, "offset": 1}).json()
    assert [c["name"] for c in page["cron_jobs"]] == ["c1", "c2"]
    assert page["pagination"] == {"total": 3, "limit": 2, "offset": 1, "has_more": False}
    assert len(http.get("/ojs/v1/cron").json()["crons"]) == 3


# --- a nack whose error is a plain string ---------------------------------------------------------

def test_nack_with_a_plain_string_error_is_recorded_as_its_message(http: httpx.Client) -> None:
    job_id = enqueue(http, "flaky")
    claim(http, "flaky")
    reply = http.post("/ojs/v1/workers/nack", json={"job_id": job_id, "error": "connection timeout"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "retryable"
    job = http.get(f"/ojs/v1/jobs/{job_id}").json()["job"]
    assert job["error"]["message"] == "connection timeout"
    # Neither a string nor an error object: still a 400
    refused = http.post("/ojs/v1/workers/nack", json={"job_id": job_id, "error": 42})
    assert refused.status_code == 400, refused.text


# --- the ack response's job; ack and nack under /jobs/{id} ----------------------------------------

def test_worker_ack_response_carries_the_job(http: httpx.Client) -> None:
    job_id = enqueue(http, "acks", "serverless.process")
    claim(http, "acks")
    reply = http.post("/ojs/v1/workers/ack", json={"job_id": job_id, "result": {"output": "ok"}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["acknowledged"] is True and body["state"] == "completed"
    job = body["job"]
    assert (job["id"], job["state"], job["type"], job["queue"]) == (job_id, "completed", "serverless.process", "acks")
    assert job["result"] == {"output": "ok"} and job["completed_at"] == body["completed_at"]


def test_worker_nack_response_carries_the_job(http: httpx.Client) -> None:
    job_id = enqueue(http, "nacks")
    claim(http, "nacks")
    reply = http.post("/ojs/v1/workers/nack", json={"job_id": job_id, "error": {"message": "boom"}})
    assert reply.status_code == 200, reply.text
    job = reply.json()["job"]
    assert (job["id"], job["state"], job["queue"], job["attempt"]) == (job_id, "retryable", "nacks", 1)


def test_ack_and_nack_under_the_job_path_settle_the_job(http: httpx.Client) -> None:
    # ack with only the worker id (ext-job-versioning VER-005's body)
    first = enqueue(http, "paths")
    claim(http, "paths", "w1")
    reply = http.post(f"/ojs/v1/jobs/{first}/ack", json={"worker_id": "w1", "result": {"n": 1}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["job"]["state"] == "completed"
    assert http.get(f"/ojs/v1/jobs/{first}").json()["job"]["result"] == {"n": 1}
    # nack, with the error as the reference README writes it
    second = enqueue(http, "paths")
    claim(http, "paths", "w1")
    reply = http.post(f"/ojs/v1/jobs/{second}/nack", json={"worker_id": "w1", "error": "connection timeout"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["job"]["state"] == "retryable"
    assert http.get(f"/ojs/v1/jobs/{second}").json()["job"]["error"]["message"] == "connection timeout"
    # An ack with no body at all
    third = enqueue(http, "paths")
    claim(http, "paths", "w1")
    assert http.post(f"/ojs/v1/jobs/{third}/ack").json()["job"]["state"] == "completed"


def test_ack_and_nack_under_the_job_path_are_fenced_like_the_worker_routes(http: httpx.Client) -> None:
    job_id = enqueue(http, "fenced")
    claim(http, "fenced", "holder")

    def both(verb: str, body: dict[str, Any]) -> tuple[tuple[int, str], tuple[int, str]]:
        by_path = http.post(f"/ojs/v1/jobs/{job_id}/{verb}", json=body)
        by_worker = http.post(f"/ojs/v1/workers/{verb}", json={"job_id": job_id, **body})
        return ((by_path.status_code, by_path.json()["error"]["code"]),
                (by_worker.status_code, by_worker.json()["error"]["code"]))

    # Another worker's claim, and a stale attempt: refused alike, the job untouched
    for body in ({"worker_id": "intruder"}, {"worker_id": "holder", "attempt": 2}):
        for verb in ("ack", "nack"):
            by_path, by_worker = both(verb, body)
            assert by_path == by_worker and by_path[0] == 409, (verb, body, by_path, by_worker)
    assert http.get(f"/ojs/v1/jobs/{job_id}").json()["job"]["state"] == "active"
    # A job that is not active any more: the same conflict
    assert http.post(f"/ojs/v1/jobs/{job_id}/ack", json={"worker_id": "holder"}).status_code == 200
    for verb in ("ack", "nack"):
        by_path, by_worker = both(verb, {})
        assert by_path == by_worker and by_path[0] == 409, (verb, by_path, by_worker)
    # A job that does not exist: the same 404
    missing = "019539a4-b68c-7def-8000-1a2b3c4d5e6f"
    for verb in ("ack", "nack"):
        by_path = http.post(f"/ojs/v1/jobs/{missing}/{verb}", json={})
        by_worker = http.post(f"/ojs/v1/workers/{verb}", json={"job_id": missing})
        assert by_path.status_code == by_worker.status_code == 404, (by_path.text, by_worker.text)
    # A body naming another job than the path: 400, not a silent choice
    refused = http.post(f"/ojs/v1/jobs/{job_id}/ack", json={"job_id": missing})
    assert refused.status_code == 400, refused.text
