"""Webhook delivery end to end: a real `ojs-server` sends lifecycle events to a real HTTP receiver
in the test process, through the outbox its delivery loop drains."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.fixtures.broker_process import ROOT, BrokerProcess, serving, stop_process
from tests.fixtures.procs import wait_until
from tests.fixtures.webhook_receiver import Received, receiving
from tests.readme_examples import blocks

SECRET = "whsec_test_secret_0123456789"
FAST = {
    "OJS_WEBHOOKS_ALLOW_HTTP": "true",
    "OJS_WEBHOOK_INTERVAL_MS": "20",
    "OJS_WEBHOOK_BACKOFF_BASE_MS": "50",  # retries after 50 ms, 200 ms, 1 s, ...
    "OJS_WEBHOOK_DISABLE_AFTER_FAILURES": "3",
    "OJS_WEBHOOK_TIMEOUT_MS": "3000",
    "OJS_WEBHOOK_LEASE_MS": "4000",
}


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[BrokerProcess]:
    with serving(redis_url, tmp_path, env=FAST) as proc:
        yield proc


@pytest.fixture
def http(server: BrokerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def subscribe(http: httpx.Client, url: str, events: list[str], **fields: Any) -> dict[str, Any]:
    reply = http.post("/ojs/v1/webhooks/subscriptions", json={"url": url, "events": events, "secret": SECRET, **fields})
    assert reply.status_code == 201, reply.text
    return dict(reply.json()["subscription"])


def run_job(http: httpx.Client, queue: str = "hooks", *, fail: bool = False) -> str:
    reply = http.post("/ojs/v1/jobs", json={"type": "hook.test", "args": [1], "options": {"queue": queue}})
    assert reply.status_code == 201, reply.text
    job_id = str(reply.json()["job"]["id"])
    jobs = http.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": 1}).json()["jobs"]
    assert [job["id"] for job in jobs] == [job_id]
    if fail:
        error = {"code": "boom", "message": "boom", "retryable": False}
        assert http.post("/ojs/v1/workers/nack", json={"job_id": job_id, "error": error}).status_code == 200
    else:
        assert http.post("/ojs/v1/workers/ack", json={"job_id": job_id, "result": {"ok": True}}).status_code == 200
    return job_id


def signature_ok(received: Received, secret: str = SECRET) -> bool:
    timestamp = received.headers["x-ojs-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    sent = [part.strip().removeprefix("sha256=") for part in received.headers["x-ojs-signature"].split(",")]
    return any(hmac.compare_digest(expected, s) for s in sent)


def readme_verify() -> Callable[..., bool]:
    """The README's receiver-side check, as written there."""
    block = next(b for b in blocks(ROOT / "README.md") if b.file == "receiver/verify.py")
    namespace: dict[str, Any] = {}
    exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 (our own README)
    return namespace["verify"]  # type: ignore[no-any-return]


def log_of(http: httpx.Client, sub_id: str) -> list[dict[str, Any]]:
    reply = http.get(f"/ojs/v1/webhooks/subscriptions/{sub_id}/deliveries")
    assert reply.status_code == 200, reply.text
    return list(reply.json()["deliveries"])


def deliveries_in_store(redis_url: str, sub_id: str) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(redis_url)
    try:
        rows = [client.hgetall(key) for key in client.scan_iter(match="{ojs}:webhook:delivery:*")]
    finally:
        client.close()
    return [row for row in rows if row.get(b"subscription_id") == sub_id.encode()]


def test_webhook_delivers_signed_event_matching_its_filters(http: httpx.Client, redis_url: str) -> None:
    with receiving() as receiver:
        # Given a subscription to job.completed on queue hooks, and one for another queue
        sub = subscribe(http, receiver.url, ["job.completed"], filter={"queues": ["hooks"]})
        other = subscribe(http, receiver.url, ["job.*"], filter={"queues": ["elsewhere"]})
        # When two jobs of queue hooks run to completion
        first, second = run_job(http), run_job(http)
        # Then each completion arrives once, signed, as an OJS event envelope
        got = [receiver.next(), receiver.next()]
        assert sorted(json.loads(r.body)["subject"] for r in got) == sorted([first, second])
        for received in got:
            event = json.loads(received.body)
            assert received.path == "/hook"
            assert received.headers["content-type"] == "application/json"
            assert received.headers["user-agent"].startswith("OJS-Webhook/")
            assert received.headers["x-ojs-event-type"] == event["type"] == "job.completed"
            assert received.headers["x-ojs-subscription-id"] == sub["id"]
            assert received.headers["x-ojs-delivery-id"].startswith("del_")
            assert signature_ok(received)
            assert not signature_ok(received, "whsec_some_other_secret_000")
            assert readme_verify()(SECRET, received.headers, received.body)
            assert event["specversion"] == "1.0" and event["id"].startswith("evt_")
            assert event["data"]["queue"] == "hooks" and event["data"]["job_type"] == "hook.test"
        # and nothing else was made for either subscription: the second job's earlier events
        # (enqueued, started) were fanned out before its completion was
        assert {d[b"event_type"] for d in deliveries_in_store(redis_url, sub["id"])} == {b"job.completed"}
        assert len(deliveries_in_store(redis_url, sub["id"])) == 2
        assert deliveries_in_store(redis_url, other["id"]) == []
        log = wait_until(lambda: len(log_of(http, sub["id"])) == 2 and log_of(http, sub["id"]), what="the log")
        assert {entry["outcome"] for entry in log} == {"delivered"}
        assert {entry["status_code"] for entry in log} == {200}


def test_webhook_retried_after_500_with_the_same_delivery_id(http: httpx.Client) -> None:
    with receiving([500]) as receiver:
        # Given a receiver that fails its first request with a 500
        sub = subscribe(http, receiver.url, ["job.discarded"])
        # When a job fails
        job_id = run_job(http, fail=True)
        # Then the delivery is sent again, with the same delivery id and a fresh signature
        first, second = receiver.next(), receiver.next()
        assert first.headers["x-ojs-delivery-id"] == second.headers["x-ojs-delivery-id"]
        assert first.body == second.body and json.loads(second.body)["subject"] == job_id
        assert signature_ok(first) and signature_ok(second)
        log = wait_until(lambda: len(log_of(http, sub["id"])) == 2 and log_of(http, sub["id"]), what="two log entries")
        newest, oldest = log
        assert (oldest["attempt"], oldest["outcome"], oldest["status_code"]) == (1, "retry", 500)
        assert (newest["attempt"], newest["outcome"], newest["status_code"]) == (2, "delivered", 200)
        assert "next_attempt_at" in oldest
        reply = http.get(f"/ojs/v1/webhooks/deliveries/{newest['delivery_id']}")
        assert reply.json()["delivery"]["state"] == "delivered"
        assert reply.json()["delivery"]["attempt"] == 2


def test_webhook_client_error_is_not_retried(http: httpx.Client) -> None:
    with receiving([410]) as receiver:
        sub = subscribe(http, receiver.url, ["job.completed"])
        run_job(http)
        delivery_id = receiver.next().headers["x-ojs-delivery-id"]
        log = wait_until(lambda: log_of(http, sub["id"]), what="the log entry")
        assert [(e["attempt"], e["outcome"], e["status_code"]) for e in log] == [(1, "dead", 410)]
        assert http.get(f"/ojs/v1/webhooks/deliveries/{delivery_id}").json()["delivery"]["state"] == "dead"
        # An operator may send a dead delivery again (spec 12.2: dead delivery replay).
        assert http.post(f"/ojs/v1/webhooks/deliveries/{delivery_id}/retry").status_code == 200
        assert receiver.next().headers["x-ojs-delivery-id"] == delivery_id


def test_webhook_subscription_disabled_after_repeated_failures(http: httpx.Client, redis_url: str) -> None:
    with receiving([500] * 50) as receiver:
        # Given a receiver that always fails, and a server that disables after 3 failures in a row
        sub = subscribe(http, receiver.url, ["job.completed"])
        # When a job completes
        run_job(http)
        # Then after the third failed attempt the subscription is inactive, with why
        disabled = wait_until(lambda: (s := http.get(f"/ojs/v1/webhooks/subscriptions/{sub['id']}").json())
                              and not s["active"] and s, what="the subscription disabled")
        assert disabled["consecutive_failures"] == 3
        assert "3 failed delivery attempts" in disabled["disabled_reason"]
        assert [e["attempt"] for e in log_of(http, sub["id"])] == [3, 2, 1]
        # and its pending retry is cancelled, never sent
        assert len(deliveries_in_store(redis_url, sub["id"])) == 1
        wait_until(lambda: deliveries_in_store(redis_url, sub["id"])[0][b"state"] == b"cancelled", what="cancelled")
        assert receiver.requests.qsize() == 3
        # Turned on again by hand, it starts a fresh failure streak
        on = http.patch(f"/ojs/v1/webhooks/subscriptions/{sub['id']}", json={"active": True}).json()
        assert on["active"] and on["consecutive_failures"] == 0 and "disabled_reason" not in on


def test_webhook_redelivered_after_its_sender_is_killed(redis_url: str, tmp_path: Path) -> None:
    with receiving(hold_first=True) as receiver:
        first_server = BrokerProcess(redis_url, tmp_path, env=FAST)
        try:
            first_server.wait_ready()
            with httpx.Client(base_url=first_server.url, timeout=10) as http:
                sub = subscribe(http, receiver.url, ["job.completed"])
                job_id = run_job(http)
            # Given the first attempt is in flight (the receiver holds it)
            held = receiver.next()
            assert receiver.holding.wait(10)
            # When the process sending it is killed
            os.kill(first_server.proc.pid, signal.SIGKILL)
            first_server.proc.wait()
        finally:
            stop_process(first_server.proc)
        receiver.release.set()
        # Then another server sends it again once its lease ends: same delivery id, same event
        with serving(redis_url, tmp_path, env=FAST) as second_server:
            again = receiver.next()
            assert again.headers["x-ojs-delivery-id"] == held.headers["x-ojs-delivery-id"]
            assert json.loads(again.body)["subject"] == job_id and signature_ok(again)
            with httpx.Client(base_url=second_server.url, timeout=10) as http:
                log = wait_until(lambda: log_of(http, sub["id"]), what="the log entry")
            # the killed attempt never settled: the log has only the redelivery, as attempt 2
            assert [(e["attempt"], e["outcome"]) for e in log] == [(2, "delivered")]


def test_webhook_redirect_to_another_origin_is_refused(http: httpx.Client) -> None:
    with receiving() as elsewhere, receiving([307], redirect_to=None) as receiver:
        receiver.redirect_to = elsewhere.url  # another port: another origin
        sub = subscribe(http, receiver.url, ["job.completed"])
        run_job(http)
        receiver.next()
        log = wait_until(lambda: log_of(http, sub["id"]), what="the log entry")
        assert log[0]["outcome"] == "dead" and "another origin" in log[0]["error"]
        assert elsewhere.requests.empty()


def test_webhook_test_ping_and_secret_rotation(http: httpx.Client) -> None:
    with receiving([200, 200]) as receiver:
        sub = subscribe(http, receiver.url, ["job.completed"])
        # The test endpoint sends a signed webhook.test now and says how it went
        reply = http.post(f"/ojs/v1/webhooks/subscriptions/{sub['id']}/test")
        assert reply.status_code == 200, reply.text
        assert reply.json()["success"] is True and reply.json()["status_code"] == 200
        assert reply.json()["response_body"] == "ok"
        ping = receiver.next()
        assert ping.headers["x-ojs-event-type"] == json.loads(ping.body)["type"] == "webhook.test"
        assert signature_ok(ping)
        # After a rotation both the new and the old secret sign, the new one first
        new_secret = http.post(f"/ojs/v1/webhooks/subscriptions/{sub['id']}/rotate-secret").json()["secret"]
        run_job(http)
        delivered = receiver.next()
        assert len(delivered.headers["x-ojs-signature"].split(",")) == 2
        assert signature_ok(delivered, new_secret) and signature_ok(delivered, SECRET)


def test_webhook_server_stops_without_waiting_out_an_attempt_in_flight(redis_url: str, tmp_path: Path) -> None:
    slow = {**FAST, "OJS_WEBHOOK_TIMEOUT_MS": "300000", "OJS_WEBHOOK_LEASE_MS": "400000"}
    with receiving(hold_first=True) as receiver:
        server = BrokerProcess(redis_url, tmp_path, env=slow)
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=10) as http:
                subscribe(http, receiver.url, ["job.completed"])
                run_job(http)
            # Given an attempt the receiver holds, with minutes left before its deadline
            receiver.next()
            assert receiver.holding.wait(10)
            # When the server is asked to stop
            server.proc.terminate()
            # Then it exits by itself (the attempt is given up, to be redelivered) after its
            # graceful shutdown, which ends by re-raising the SIGTERM
            assert server.wait_exit(60) in (0, -signal.SIGTERM), server.log_tail()
            assert "Traceback" not in server.log_tail(200)
        finally:
            server.stop()


def test_a_receiver_redirecting_to_an_invalid_location_stalls_no_other_delivery(
    redis_url: str, tmp_path: Path,
) -> None:
    """Its attempts end (dead: a redirect that cannot be followed), so the one delivery slot goes
    on to the next subscriber's deliveries; its test ping answers too."""
    env = {**FAST, "OJS_WEBHOOK_CONCURRENCY": "1"}
    with serving(redis_url, tmp_path, env=env) as server, httpx.Client(base_url=server.url, timeout=10) as http, \
            receiving([302] * 100, redirect_to="http://127.0.0.1:99999/x") as bad, receiving() as good:
        bad_sub = subscribe(http, bad.url, ["job.completed"])
        run_job(http)
        bad.next()
        subscribe(http, good.url, ["job.completed"])
        run_job(http)
        good.next(timeout_s=15)
        reply = http.post(f"/ojs/v1/webhooks/subscriptions/{bad_sub['id']}/test")
        assert reply.status_code == 200, reply.text
