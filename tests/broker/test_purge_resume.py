"""A purge whose budget runs out among kept jobs (ended members of running workflows at the
queue's oldest end) goes on past them on the next call, through its cursor."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.job_admin import JobAdmin, PurgeCursor
from runtime.broker.keys import Keys
from tests.broker.conftest import Run, body
from tests.broker.test_nested_workflows import Flow, chain, step


def test_a_purge_goes_on_past_more_kept_jobs_than_its_budget(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, enqueue: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = itertools.count(1_700_000_000_000)
    monkeypatch.setattr(timefmt, "now_ms", lambda: next(clock))  # each completion a later ms
    # Given 8 completed first steps of running workflows at the oldest end of the completed
    # jobs (kept: their workflows read them), then 3 plain completed jobs
    for _ in range(8):
        flow = Flow(broker, run, redis_client, keys, chain(step("first"), step("second", queue="later")))
        assert flow.runnable() == ["first"]
        flow.ack("first")
    plain = enqueue(body(), body(), body())
    for job in run(broker.fetch(["default"], count=3, worker_id="w1")):
        run(broker.ack(job[b"id"].decode()))
    admin = JobAdmin(broker)
    # When purges of a budget of 5 follow each other's cursor
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5))
    assert (deleted, stopped) == (0, PurgeCursor(0, 5))  # all 5 examined were kept
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5, start=stopped))
    # Then the second one gets past the kept jobs to the plain ones, and is done
    assert (deleted, stopped) == (3, None)
    assert not any(redis_client.exists(keys.job(i)) for i in plain)
    assert redis_client.zcard(keys.ended("default", "completed")) == 8
