"""The pure parts of webhooks: event filters, the retry verdict and schedule, signatures."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from runtime.webhooks import sender, signing
from runtime.webhooks.delivery import retry_delay_ms, verdict
from runtime.webhooks.model import Subscription, WebhookFilter, type_matches
from runtime.webhooks.sender import Attempt


@pytest.mark.parametrize(("patterns", "event", "wanted"), [
    (["job.completed"], "job.completed", True),
    (["job.completed"], "job.failed", False),
    (["job.*"], "job.failed", True),
    (["job.*"], "jobs.failed", False),
    (["job.*"], "workflow.completed", False),
    (["*"], "cron.triggered", True),
    (["workflow.*", "job.failed"], "workflow.step_completed", True),
])
def test_webhook_type_filter(patterns: list[str], event: str, wanted: bool) -> None:
    assert type_matches(patterns, event) is wanted


def test_webhook_attribute_filter_must_match_as_well() -> None:
    sub = Subscription(id="sub_1", url="https://x.example.com", events=["job.*"], active=True,
                       filter=WebhookFilter(queues=["payments"], job_types=["pay.run"]),
                       created_at_ms=0, updated_at_ms=0)
    assert sub.wants("job.completed", {"queue": "payments", "job_type": "pay.run"})
    assert not sub.wants("job.completed", {"queue": "default", "job_type": "pay.run"})
    assert not sub.wants("job.completed", {"queue": "payments", "job_type": "other"})
    assert not sub.wants("workflow.completed", {"queue": "payments", "job_type": "pay.run"})


@pytest.mark.parametrize(("attempt", "expected"), [
    (Attempt(status=200), "delivered"), (Attempt(status=204), "delivered"),
    (Attempt(status=500), "retry"), (Attempt(status=503), "retry"), (Attempt(status=429), "retry"),
    (Attempt(error="timeout: timed out"), "retry"), (Attempt(error="ConnectionRefusedError"), "retry"),
    (Attempt(status=400), "dead"), (Attempt(status=404), "dead"), (Attempt(status=410), "dead"),
    (Attempt(status=307, permanent=True, error="redirect to another origin refused"), "dead"),
])
def test_webhook_verdict(attempt: Attempt, expected: str) -> None:
    assert verdict(attempt, attempt=1, max_attempts=8) == expected


def test_webhook_out_of_attempts_is_dead() -> None:
    assert verdict(Attempt(status=500), attempt=8, max_attempts=8) == "dead"
    assert verdict(Attempt(status=500), attempt=7, max_attempts=8) == "retry"


def test_webhook_retry_schedule_is_the_specs() -> None:
    minutes = [retry_delay_ms(attempt, 30_000) / 60_000 for attempt in range(1, 9)]
    assert minutes == [0.5, 2, 10, 60, 240, 720, 1440, 1440]


def test_webhook_signature_covers_timestamp_and_body() -> None:
    header = signing.signature_header(["whsec_new_secret_000000", "whsec_old_secret_000000"], 1700000000, b'{"a":1}')
    assert signing.verify("whsec_new_secret_000000", 1700000000, b'{"a":1}', header)
    assert signing.verify("whsec_old_secret_000000", 1700000000, b'{"a":1}', header)
    assert not signing.verify("whsec_new_secret_000000", 1700000001, b'{"a":1}', header)
    assert not signing.verify("whsec_new_secret_000000", 1700000000, b'{"a":2}', header)


def test_webhook_attempt_ends_at_its_deadline_against_a_trickling_receiver() -> None:
    # Given a receiver that answers one byte of its headers at a time, each well within any
    # single read's timeout, for far longer than the attempt may take
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.05):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # When an attempt with a 1 s deadline is sent to it
        result = sender.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", {}, timeout_s=1.0)
    finally:
        stop.set()
        listener.close()
    # Then it ends as a timeout (the trickle would last 50 s), to be retried
    assert result.status is None and result.error is not None and result.error.startswith("timeout")
    assert verdict(result, attempt=1, max_attempts=8) == "retry"


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x", "http://[::1/x"])
def test_a_redirect_to_an_invalid_location_ends_the_attempt(location: str) -> None:
    from tests.fixtures.webhook_receiver import receiving

    with receiving([302], redirect_to=location) as receiver:
        result = sender.post(receiver.url, b"{}", {}, timeout_s=3)
    assert result.status == 302 and result.permanent and "invalid location" in (result.error or "")


def test_an_attempt_always_settles_whatever_its_post_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter (and its delivery slot) must never wait for ever on an attempt's thread."""
    def broken(*_args: object, **_kwargs: object) -> Attempt:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(sender, "post", broken)
    result = asyncio.run(asyncio.wait_for(sender.send("https://example.invalid/", b"{}", {}, timeout_s=1), 10))
    assert result.status is None and "unexpected" in (result.error or "")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(value: str) -> None:
    from runtime.webhooks.delivery import _next_attempt_ms

    assert sender._retry_after(value) is None or value == "-inf"
    result = Attempt(status=429, retry_after_s=sender._retry_after(value))
    assert 0 <= _next_attempt_ms(result, 1, 30_000, 0) <= 86_400_000


def test_an_attempt_whose_name_lookup_hangs_ends_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a receiver whose name lookup does not answer (a resolver that hangs): the attempt's
    # thread cannot be cut short there, before it has a socket to close
    release, lookup_over = threading.Event(), threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example":
            release.wait(30)
            lookup_over.set()
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        # When an attempt of 0.3 s is sent there
        result = asyncio.run(sender.send("http://hangs.example/hook", b"{}", {}, timeout_s=0.3))
        # Then it ended as a timeout while the lookup still hung
        assert not lookup_over.is_set()
        assert result.status is None and result.error is not None and result.error.startswith("timeout")
    finally:
        release.set()
