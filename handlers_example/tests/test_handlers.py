"""Tests of the example handlers, written with the testing kit (``runtime.testing``): copy them.

The fixtures come with ojs-runtime (its pytest plugin): ``ojs_fake`` records enqueues without
running anything, ``ojs_inline`` runs each job as it is enqueued, ``ojs_real`` runs the real
broker on Redis (an embedded one unless ``--ojs-redis-url`` is given) and ``drain`` is the
worker. Each test gets its own jobs, clock and injected failures.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import handlers_example  # noqa: F401  (registers the handlers, as `ojs-run handlers_example` does)
from handlers_example import produce
from runtime import Client
from runtime.testing import JobFailed, MemoryContext, RealContext


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def enqueue(job_type: str, *args: Any, **options: Any) -> dict[str, Any]:
    async with Client() as client:
        job_id = await client.enqueue(job_type, list(args), **options)
        assert job_id is not None
        return await client.get(job_id)


# --- what gets enqueued (fake mode: nothing runs) ---------------------------------------------

def test_the_producer_enqueues_one_job_of_each_kind_on_its_handlers_queue(ojs_fake: MemoryContext) -> None:
    run(produce.main())

    ojs_fake.assert_enqueued("email.send", args=["ada@example.com", "Welcome"], queue="email")
    ojs_fake.assert_enqueued("report.build", queue="reports")
    ojs_fake.assert_enqueued("video.transcode", args=["v-42"], queue="media")
    ojs_fake.assert_enqueued("webhook.deliver", queue="webhooks", count=3)
    (hook,) = ojs_fake.all_enqueued("webhook.deliver", args=["https://example.com/hook", {"event": "signup"}])
    assert hook["max_attempts"] == 5  # the handler's retry policy is the default
    ojs_fake.refute_performed("email.send")


# --- what the handlers do (inline mode: each enqueue runs its job) ------------------------------

def test_an_email_is_sent(ojs_inline: MemoryContext) -> None:
    job = run(enqueue("email.send", "ada@example.com", "Welcome"))
    assert job["state"] == "completed"
    assert job["result"] == {"delivered": True, "to": "ada@example.com", "message_id": f"<{job['id']}@example.com>"}


def test_an_email_without_a_subject_fails_at_once(ojs_inline: MemoryContext) -> None:
    with pytest.raises(JobFailed, match="invalid_arguments"):
        run(enqueue("email.send", "ada@example.com"))
    ojs_inline.assert_failed("email.send", count=1)  # not retried: the arguments will never bind


def test_a_report_is_the_same_for_the_same_day(ojs_inline: MemoryContext) -> None:
    first = run(enqueue("report.build", "2024-06-01", 1000))
    again = run(enqueue("report.build", "2024-06-01", 1000))
    other = run(enqueue("report.build", "2024-06-02", 1000))
    assert first["result"]["checksum"] == again["result"]["checksum"] != other["result"]["checksum"]


def test_the_timing_middleware_logs_each_job(ojs_inline: MemoryContext, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="runtime.job"):
        run(enqueue("report.build", "2024-06-01", 10))
    assert any("report.build attempt 1 completed" in message for message in caplog.messages)


# --- failures and retries (fake mode + drain + time control) ------------------------------------

def test_a_webhook_is_retried_with_backoff_until_the_endpoint_answers(ojs_fake: MemoryContext) -> None:
    ojs_fake.freeze_time("2026-01-01T00:00:00Z")
    run(enqueue("webhook.deliver", "https://example.com/hook", {"event": "signup"}))

    assert run(ojs_fake.drain()).counts == {"retried": 1}  # attempt 1: the endpoint is down
    ojs_fake.advance_time("1s")  # the policy's first delay
    assert run(ojs_fake.drain()).counts == {"retried": 1}
    ojs_fake.advance_time("2s")  # then twice that
    summary = run(ojs_fake.drain())

    assert summary.counts == {"completed": 1}
    assert summary.jobs[0]["result"] == {"url": "https://example.com/hook", "status": 200, "attempt": 3}


def test_a_gone_endpoint_is_not_retried(ojs_fake: MemoryContext) -> None:
    run(enqueue("webhook.deliver", "https://example.com/gone", {}))
    assert run(ojs_fake.drain()).counts == {"failed": 1}
    (failure,) = ojs_fake.assert_failed("webhook.deliver")
    assert failure["error"]["message"] == "https://example.com/gone answered 410 Gone"


def test_a_busy_endpoint_is_retried_after_the_delay_it_asked_for(ojs_fake: MemoryContext) -> None:
    ojs_fake.freeze_time("2026-01-01T00:00:00Z")
    job = run(enqueue("webhook.deliver", "https://example.com/busy", {}, 0))
    run(ojs_fake.drain())
    assert ojs_fake.assert_job_state(job["id"], "retryable")["next_attempt_at"] == "2026-01-01T00:00:02.000Z"
    ojs_fake.advance_time("2s")
    run(ojs_fake.drain())
    ojs_fake.assert_job_state(job["id"], "completed")


def test_an_smtp_outage_is_retried(ojs_fake: MemoryContext) -> None:
    ojs_fake.fail_next("email.send", ConnectionRefusedError("SMTP connection refused"))
    run(enqueue("email.send", "ada@example.com", "Welcome"))
    run(ojs_fake.drain(with_scheduled=True))  # run the retry without waiting for its backoff
    ojs_fake.assert_failed("email.send", count=1)
    ojs_fake.assert_completed("email.send", count=1)


# --- against the real broker (real mode: Redis, the broker's scripts, drain as the worker) -------

def test_a_transcode_reports_progress_and_completes(ojs_real: RealContext) -> None:
    job = run(enqueue("video.transcode", "v-1", 2))
    summary = run(ojs_real.drain())
    assert summary.counts == {"completed": 1}
    done = ojs_real.assert_job_state(job["id"], "completed")
    assert done["result"] == {"video_id": "v-1", "segments": 2, "resumed_from": 0}
    assert done["progress"] == 1.0
