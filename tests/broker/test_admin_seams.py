"""The operator's actions where they meet running work: a cancelled run, a cron into a full queue,
filtered listings that span pages, and a store written before the ended-job indexes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.integrity import check_integrity
from runtime.broker.job_admin import JobAdmin
from runtime.broker.job_listing import JobFilter, _Cursor, encode_cursor
from runtime.broker.keys import Keys
from runtime.broker.migrations import EndedIndexMigration
from runtime.broker.queue_config import QueueConfig, QueueConfigRequest
from runtime.envelope import CronRequest
from runtime.errors import Conflict, InvalidRequest
from tests.broker.conftest import Run, body

MINUTE_MS = 60_000


def test_a_job_cancelled_while_running_is_not_retried_before_its_run_may_have_stopped(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = JobAdmin(broker)
    (job_id,) = enqueue(body("t.x", visibility_timeout_ms=30_000))
    (claimed,) = run(broker.fetch(["default"], worker_id="w-a"))
    run(broker.cancel(job_id))  # its worker hears of it at its next heartbeat, and may still run it
    with pytest.raises(Conflict, match="cancelled while running"):
        run(admin.retry(job_id))
    assert run(broker.fetch(["default"], worker_id="w-b")) == []
    # Once the cancelled run's lease has passed, nothing of it can still run: the retry goes on.
    later = int(claimed[b"visible_until"]) + 1
    monkeypatch.setattr(timefmt, "now_ms", lambda: later)
    run(admin.retry(job_id))
    (again,) = run(broker.fetch(["default"], worker_id="w-b"))
    assert again[b"id"] == job_id.encode() and again[b"attempt"] == b"1"


def test_a_job_cancelled_before_it_ran_is_retried_at_once(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    (job_id,) = enqueue(body("t.x"))
    run(broker.cancel(job_id))
    run(JobAdmin(broker).retry(job_id))
    assert run(broker.get(job_id))[b"state"] == b"available"


def test_a_cancel_previous_cron_tick_into_a_full_queue_leaves_the_previous_job_alone(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    crons = Crons(broker)
    req = msgspec.convert({"name": "nightly", "expression": "* * * * *", "overlap_policy": "cancel_previous",
                           "job_template": {"type": "report.build", "args": [], "options": {"queue": "rep"}}},
                          CronRequest)
    run(crons.register(req))
    first_tick = timefmt.now_ms() + 2 * MINUTE_MS
    assert run(crons.tick(now_ms=first_tick)) == 1
    previous = run(crons.get("nightly"))["last_job_id"]
    (running,) = run(broker.fetch(["rep"], worker_id="w"))  # the previous instance runs
    enqueue(body("t.x", queue="rep"))
    run(QueueConfig(broker.redis, broker.keys).update("rep", msgspec.convert({"max_depth": 1}, QueueConfigRequest)))
    # The next tick finds the queue full: it is skipped, and the running instance is not cancelled.
    assert run(crons.tick(now_ms=first_tick + MINUTE_MS)) == 0
    assert running[b"id"] == previous.encode()
    assert run(broker.get(previous))[b"state"] == b"active"
    view = run(crons.get("nightly"))
    assert (view["last_skip_reason"], view["last_job_id"]) == ("queue_full", previous)


def test_a_filtered_walk_returns_every_match_across_pages(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    wanted = enqueue(*(body("a.x", queue="w") for _ in range(50)))
    enqueue(*(body("b.x", queue="w") for _ in range(30)))
    listing = JobAdmin(broker).listing
    seen: list[str] = []
    cursor = None
    while True:
        page = run(listing.page(JobFilter(state="available", type="a.x"), limit=10, cursor=cursor))
        seen += [item["id"] for item in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert sorted(seen) == sorted(wanted) and len(seen) == len(set(seen))


def test_a_cursor_that_is_not_one_of_ours_is_a_400(broker: Broker, run: Run[Any]) -> None:
    listing = JobAdmin(broker).listing
    for cursor in (encode_cursor(_Cursor(0, float("nan"), b"")), encode_cursor(_Cursor(0, float("inf"), b"")),
                   "%%%", encode_cursor(_Cursor(-1, 0.0, b"")), encode_cursor(_Cursor(99, 0.0, b""))):
        with pytest.raises(InvalidRequest):
            run(listing.page(JobFilter(), limit=5, cursor=cursor))


def test_ended_jobs_of_an_older_store_are_indexed_once_by_the_migration(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis, keys: Keys,
) -> None:
    done, cancelled = enqueue(body("t.x"), body("t.x"))
    (claimed,) = run(broker.fetch(["default"], worker_id="w"))
    assert claimed[b"id"] == done.encode()
    run(broker.ack(done, worker_id="w"))
    run(broker.cancel(cancelled))
    # As an earlier version left them: ended, in no ended-job index.
    redis_client.delete(keys.ended("default", "completed"), keys.ended("default", "cancelled"))
    assert run(check_integrity(broker.redis, broker.keys)) != []
    migration = EndedIndexMigration(broker)
    assert run(migration.run()) == 2
    assert run(check_integrity(broker.redis, broker.keys)) == []
    assert redis_client.zscore(keys.ended("default", "completed"), done) is not None
    assert run(migration.run()) == 0  # done once: not run again
