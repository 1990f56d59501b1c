"""The statistics history: counts written by the transitions, the rollup into hours, and the
series read back, with the clock given explicitly (no waiting for minutes to pass)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker, Completion
from runtime.broker.keys import Keys
from runtime.broker.stats_history import HOUR_MS, MINUTE_MS, StatsHistory
from tests.broker.conftest import Run, body

DAY_MS = 24 * HOUR_MS
T0 = 1_900_000_000_000 - 1_900_000_000_000 % HOUR_MS  # an hour boundary, well after now


def _history(broker: Broker) -> StatsHistory:
    return StatsHistory(broker.redis, broker.keys, broker.scripts, minute_retention_ms=DAY_MS,
                        hour_retention_ms=30 * DAY_MS)


def _work(broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch, *,
          at: int, n: int) -> None:
    """n jobs enqueued at `at`, and n - 1 of them completed in the same minute (the broker's
    clock set to `at`)."""
    monkeypatch.setattr(timefmt, "now_ms", lambda: at)
    enqueue(*(body("t.x", queue="stats") for _ in range(n)), now_ms=at)
    claimed = run(broker.fetch(["stats"], count=n - 1, worker_id="w"))
    items = [Completion(job_id=f[b"id"].decode(), worker_id="w", claim=f[b"claim"].decode())
             for f in claimed]
    assert all(not isinstance(r, Exception) for r in run(broker.ack_many(items)))


def test_transitions_count_into_their_minute(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis, keys: Keys,
) -> None:
    enqueue(body("t.x", queue="a"), body("t.x", queue="a"), body("t.x", queue="b"), now_ms=T0 + 5_000)
    minute = redis_client.hgetall(keys.stats_minute(T0))
    assert minute == {b"enqueued:a": b"2", b"enqueued:b": b"1"}
    enqueue(body("t.x", queue="a"), now_ms=T0 + MINUTE_MS)
    assert redis_client.hget(keys.stats_minute(T0 + MINUTE_MS), "enqueued:a") == b"1"


def test_the_rollup_adds_each_closed_minute_to_its_hour_once_and_sets_retention(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: redis.Redis, keys: Keys,
) -> None:
    history = _history(broker)
    for m in range(3):
        enqueue(body("t.x", queue="a"), now_ms=T0 + m * MINUTE_MS)
    # Before any rollup each minute already expires (2 days after it), never lives for ever.
    assert redis_client.pexpiretime(keys.stats_minute(T0)) == T0 + 2 * DAY_MS
    assert run(history.rollup(now_ms=T0 - MINUTE_MS)) > 0  # first run: nothing closed yet of ours
    assert redis_client.hgetall(keys.stats_hour(T0)) == {}
    # Minutes 0, 1 and 2 have closed at 3:00.001, but 2 closed less than a minute ago: a late
    # transition may still count into it, so it waits.
    run(history.rollup(now_ms=T0 + 3 * MINUTE_MS + 1))
    assert redis_client.hgetall(keys.stats_hour(T0)) == {b"enqueued:a": b"2"}
    run(history.rollup(now_ms=T0 + 3 * MINUTE_MS + 2))  # again: nothing counted twice
    assert redis_client.hget(keys.stats_hour(T0), "enqueued:a") == b"2"
    run(history.rollup(now_ms=T0 + 10 * MINUTE_MS))
    assert redis_client.hget(keys.stats_hour(T0), "enqueued:a") == b"3"
    assert redis_client.pexpiretime(keys.stats_minute(T0)) == T0 + DAY_MS
    assert redis_client.pexpiretime(keys.stats_hour(T0)) == T0 + 30 * DAY_MS
    assert redis_client.pexpiretime(keys.stats_minute(T0 + 2 * MINUTE_MS)) == T0 + 2 * MINUTE_MS + DAY_MS


def test_series_read_minutes_while_kept_and_hours_after(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = _history(broker)
    _work(broker, run, enqueue, monkeypatch, at=T0 + 1_000, n=4)
    _work(broker, run, enqueue, monkeypatch, at=T0 + 5 * MINUTE_MS, n=2)
    now = T0 + 20 * MINUTE_MS
    run(history.rollup(now_ms=now))
    by_minute = run(history.series(period="5m", since_ms=T0, until_ms=T0 + 15 * MINUTE_MS - 1, queue=None,
                                   now_ms=now))
    assert [(p["enqueued"], p["completed"]) for p in by_minute["data"]] == [(4, 3), (2, 1), (0, 0)]
    assert by_minute["data"][0]["timestamp"] == "2030-03-17T17:00:00.000Z"
    # Two days later the minutes are gone from the window: the hour holds their sum.
    later = now + 2 * DAY_MS
    by_hour = run(history.series(period="1h", since_ms=T0, until_ms=T0 + HOUR_MS - 1, queue="stats",
                                 now_ms=later))
    assert [(p["enqueued"], p["completed"]) for p in by_hour["data"]] == [(6, 4)]
    assert run(history.series(period="1h", since_ms=T0, until_ms=T0 + HOUR_MS - 1, queue="other",
                              now_ms=later))["data"][0]["enqueued"] == 0


def test_throughput_is_the_mean_of_the_last_closed_minutes(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _work(broker, run, enqueue, monkeypatch, at=T0 + 1_000, n=11)  # 10 completed in minute 0
    rates = run(_history(broker).per_minute(now_ms=T0 + MINUTE_MS + 1))
    assert rates["stats"]["processed_per_minute"] == 2.0  # 10 over the last 5 minutes
    assert rates["*"] == rates["stats"]
