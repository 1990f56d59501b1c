"""Cron firing through the broker (Crons.tick over enqueue.lua): a tick that cannot create its job
is a skipped tick, and only a registration that can never fire again stops being scheduled.
Ticks are fired with an explicit ``now_ms``, a minute apart, for an every-minute cron."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import redis
from prometheus_client import REGISTRY

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.keys import Keys
from runtime.envelope import CronRequest
from runtime.errors import InvalidRequest
from tests.broker.conftest import Run

MINUTE_MS = 60_000
NAME = "hourly-report"


def _req(name: str, expression: str, policy: str = "skip", **options: Any) -> CronRequest:
    return msgspec.convert({
        "name": name, "expression": expression, "overlap_policy": policy,
        "job_template": {"type": "report.build", "args": [], "options": options},
    }, CronRequest)


def every_minute(crons: Crons, run: Run[Any], overlap_policy: str = "skip", **template_options: Any) -> dict[str, Any]:
    view, created = run(crons.register(_req(NAME, "* * * * *", overlap_policy, **template_options)))
    assert created
    return view


def skipped_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("ojs_cron_ticks_skipped_total", {"reason": reason}) or 0.0


def skip_events(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    entries = client.xrange(keys.events)
    return [msgspec.json.decode(f[b"data"]) for _, f in entries if f[b"type"] == b"cron.skipped"]


@pytest.mark.parametrize("on_conflict", ["reject", "ignore"])
def test_cron_unique_conflict_skips_the_tick_and_the_next_tick_fires(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, on_conflict: str,
) -> None:
    # Given: an every-minute cron whose job is unique by type (overlaps allowed: only the unique
    # policy stands in the way); its first tick fired a job that is still waiting
    crons = Crons(broker)
    every_minute(crons, run, "allow", unique={"keys": ["type"], "on_conflict": on_conflict})
    first_tick = timefmt.now_ms() + 2 * MINUTE_MS
    assert run(crons.tick(now_ms=first_tick)) == 1
    first_job = run(crons.get(NAME))["last_job_id"]
    skipped_before = skipped_metric("unique_conflict")

    # When: the next tick meets that job as the holder of the unique lock
    assert run(crons.tick(now_ms=first_tick + MINUTE_MS)) == 0

    # Then: the tick is skipped (logged, counted, visible), and the cron stays scheduled
    view = run(crons.get(NAME))
    assert view["enabled"] is True and view["next_run_at"] is not None
    assert (view["run_count"], view["last_job_id"]) == (1, first_job)
    assert (view["skipped_count"], view["last_skip_reason"]) == (1, "unique_conflict")
    assert view["last_skipped_at"] is not None
    assert skipped_metric("unique_conflict") == skipped_before + 1
    (event,) = skip_events(redis_client, keys)
    assert (event["reason"], event["existing_job_id"], event["cron_name"]) == ("unique_conflict", first_job, NAME)
    assert redis_client.zcard(keys.available("default")) == 1  # no second job

    # And when the first job is done, the following tick fires again
    (claimed,) = run(broker.fetch(["default"], worker_id="w1"))
    assert claimed[b"id"] == first_job.encode()
    run(broker.ack(first_job, worker_id="w1"))
    assert run(crons.tick(now_ms=first_tick + 2 * MINUTE_MS)) == 1
    view = run(crons.get(NAME))
    assert view["run_count"] == 2 and view["last_job_id"] != first_job
    assert run(broker.get(view["last_job_id"]))[b"state"] == b"available"


def test_cron_overlap_skip_is_recorded_like_any_skipped_tick(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: an every-minute cron (overlap_policy skip, the default) whose last job still waits
    crons = Crons(broker)
    every_minute(crons, run)
    first_tick = timefmt.now_ms() + 2 * MINUTE_MS
    assert run(crons.tick(now_ms=first_tick)) == 1
    skipped_before = skipped_metric("overlap_skip")
    # When
    assert run(crons.tick(now_ms=first_tick + MINUTE_MS)) == 0
    # Then
    view = run(crons.get(NAME))
    assert (view["skipped_count"], view["last_skip_reason"], view["enabled"]) == (1, "overlap_skip", True)
    assert skipped_metric("overlap_skip") == skipped_before + 1
    assert [e["reason"] for e in skip_events(redis_client, keys)] == ["overlap_skip"]


def test_cron_that_can_never_fire_is_shown_disabled_with_its_reason(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: a stored registration this version cannot fire (its expression no longer parses, as
    # after an upgrade that dropped a syntax)
    crons = Crons(broker)
    every_minute(crons, run)
    stored = msgspec.json.decode(redis_client.hget(keys.crons, NAME))
    redis_client.hset(keys.crons, NAME, msgspec.json.encode({**stored, "expression": "every other blue moon"}))
    # When: its tick comes
    assert run(crons.tick(now_ms=timefmt.now_ms() + 2 * MINUTE_MS)) == 0
    # Then: GET does not claim it is enabled, and says why
    view = run(crons.get(NAME))
    assert (view["enabled"], view["next_run_at"]) == (False, None)
    assert "every other blue moon" in view["last_error"]
    assert redis_client.zscore(keys.cron_next, NAME) is None


# --- registering again, enabling again: the next tick stays ------------------------------------


def due_daily(crons: Crons, run: Run[Any], redis_client: redis.Redis, keys: Keys) -> int:
    """A daily cron whose tick is due and not fired yet (the cron loop has not run since, or
    maintenance mode held it back for a catch-up); returns now."""
    run(crons.register(_req("daily", "0 0 * * *")))
    now = timefmt.now_ms()
    redis_client.zadd(keys.cron_next, {"daily": now - 1000})
    return now


def test_registering_an_unchanged_cron_again_keeps_its_due_tick(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    crons = Crons(broker)
    now = due_daily(crons, run, redis_client, keys)
    # When: a deploy registers the very same cron again
    run(crons.register(_req("daily", "0 0 * * *", priority=3)))  # its template may change
    # Then: the due tick still fires, it is not put off to tomorrow
    assert run(crons.tick(now_ms=now)) == 1


def test_an_every_cron_registered_more_often_than_its_interval_still_fires(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    crons = Crons(broker)
    run(crons.register(_req("hourly", "@every 1h")))
    first = int(redis_client.zscore(keys.cron_next, "hourly"))
    run(crons.register(_req("hourly", "@every 1h")))  # an app registering its crons at each start
    assert int(redis_client.zscore(keys.cron_next, "hourly")) == first
    run(crons.register(_req("hourly", "@every 2h")))  # a new schedule: from now
    assert int(redis_client.zscore(keys.cron_next, "hourly")) > first


def test_enabling_an_enabled_cron_keeps_its_due_tick_and_a_disabled_one_starts_from_now(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    crons = Crons(broker)
    now = due_daily(crons, run, redis_client, keys)
    run(crons.set_enabled("daily", True))  # PATCH {"enabled": true} of an enabled cron: nothing changes
    assert run(crons.tick(now_ms=now)) == 1
    run(crons.set_enabled("daily", False))
    run(crons.set_enabled("daily", True))
    assert int(redis_client.zscore(keys.cron_next, "daily")) > timefmt.now_ms()


# --- cancel_previous x unique: a tick that creates nothing cancels nothing -----------------------


def test_cancel_previous_cancels_nothing_for_a_tick_another_jobs_lock_turns_into_a_skip(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: cancel_previous, unique while available; the previous tick's job P runs, and a
    # "run now" job X of the same fingerprint waits, holding the lock
    crons = Crons(broker)
    run(crons.register(_req("c", "* * * * *", "cancel_previous",
                            unique={"keys": ["type"], "states": ["available"], "on_conflict": "reject"})))
    tick = timefmt.now_ms() + 2 * MINUTE_MS
    assert run(crons.tick(now_ms=tick)) == 1
    p = run(crons.get("c"))["last_job_id"]
    assert [c[b"id"].decode() for c in run(broker.fetch(["default"], worker_id="w1"))] == [p]
    run(crons.trigger("c"))
    # When: the next tick meets X's lock (a skipped tick: it creates nothing)
    assert run(crons.tick(now_ms=tick + MINUTE_MS)) == 0
    # Then: P, running, was not cancelled for nothing
    assert redis_client.hget(keys.job(p), "state") == b"active"


def test_cancel_previous_replaces_a_previous_job_that_holds_the_lock_itself(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: cancel_previous, unique while active: the previous tick's job P runs and holds the lock
    crons = Crons(broker)
    run(crons.register(_req("c", "* * * * *", "cancel_previous",
                            unique={"keys": ["type"], "states": ["available", "active"], "on_conflict": "reject"})))
    tick = timefmt.now_ms() + 2 * MINUTE_MS
    assert run(crons.tick(now_ms=tick)) == 1
    p = run(crons.get("c"))["last_job_id"]
    run(broker.fetch(["default"], worker_id="w1"))
    # When: the next tick fires
    assert run(crons.tick(now_ms=tick + MINUTE_MS)) == 1
    # Then: P is cancelled (its lock with it), and the tick's job takes its place
    fresh = run(crons.get("c"))["last_job_id"]
    assert fresh != p
    assert [redis_client.hget(keys.job(i), "state") for i in (p, fresh)] == [b"cancelled", b"available"]


@pytest.mark.parametrize("spellings", [{"expression": "0 * * * *", "cron": "0 0 * * *"},
                                       {"cron": "0 * * * *", "schedule": "*/5 * * * *"}])
def test_a_schedule_given_twice_differently_is_refused_not_half_ignored(
    broker: Broker, run: Run[Any], spellings: dict[str, str],
) -> None:
    req = msgspec.convert({"name": "twice", **spellings, "job_template": {"type": "report.build", "args": []}},
                          CronRequest)
    with pytest.raises(InvalidRequest, match="give the schedule once"):
        run(Crons(broker).register(req))


def test_a_schedule_given_twice_the_same_is_taken(broker: Broker, run: Run[Any]) -> None:
    req = msgspec.convert({"name": "same", "expression": "0 * * * *", "cron": "0 * * * *",
                           "job_template": {"type": "report.build", "args": []}}, CronRequest)
    view, created = run(Crons(broker).register(req))
    assert created and view["expression"] == "0 * * * *"
