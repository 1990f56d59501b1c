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


def _kept_then_plain(broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
                     enqueue: Callable[..., list[str]], kept: int, plain: int) -> tuple[list[Flow], list[str]]:
    """`kept` completed first steps of running workflows at the oldest end of the completed
    jobs (a purge keeps them: their workflows read them), then `plain` plain completed jobs."""
    flows = []
    for n in range(kept):  # each second step in a queue of its own: a test may run one alone
        flow = Flow(broker, run, redis_client, keys, chain(step("first"), step("second", queue=f"later-{n}")))
        assert flow.runnable() == ["first"]
        flow.ack("first")
        flows.append(flow)
    ids = enqueue(*(body() for _ in range(plain)))
    for job in run(broker.fetch(["default"], count=plain, worker_id="w1")):
        run(broker.ack(job[b"id"].decode()))
    return flows, ids


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(1_700_000_000_000)
    monkeypatch.setattr(timefmt, "now_ms", lambda: next(ticks))  # each completion a later ms


def test_a_purge_goes_on_past_more_kept_jobs_than_its_budget(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, enqueue: Callable[..., list[str]],
    clock: None,
) -> None:
    flows, plain = _kept_then_plain(broker, run, redis_client, keys, enqueue, kept=8, plain=3)
    admin = JobAdmin(broker)
    fifth = redis_client.zrange(keys.ended("default", "completed"), 4, 4, withscores=True)[0][1]
    # When purges of a budget of 5 follow each other's cursor
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5))
    assert (deleted, stopped) == (0, PurgeCursor(0, int(fifth), 1))  # all 5 examined were kept
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5, start=stopped))
    # Then the second one gets past the kept jobs to the plain ones, and is done
    assert (deleted, stopped) == (3, None)
    assert not any(redis_client.exists(keys.job(i)) for i in plain)
    assert redis_client.zcard(keys.ended("default", "completed")) == 8


def test_a_purge_cursor_holds_when_a_job_kept_before_it_leaves_the_index(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, enqueue: Callable[..., list[str]],
    clock: None,
) -> None:
    flows, plain = _kept_then_plain(broker, run, redis_client, keys, enqueue, kept=5, plain=3)
    admin = JobAdmin(broker)
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5))
    assert deleted == 0 and stopped is not None
    # When the oldest kept job's workflow ends and that job is deleted before the next call
    oldest = flows[0]
    assert oldest.runnable("later-0") == ["second"]
    oldest.ack("second")
    first_step = oldest.view["steps"][0]["job_id"]
    run(admin.delete(first_step))
    # Then the next call still starts right past the jobs it kept, and deletes every plain job
    deleted, stopped = run(admin.purge("default", ["completed"], older_than_ms=None, budget=5, start=stopped))
    assert (deleted, stopped) == (3, None)
    assert not any(redis_client.exists(keys.job(i)) for i in plain)
