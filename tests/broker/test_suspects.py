"""Suspects: a job that was running beside others when its process died is not charged the loss;
it is given only to an idle caller, alone, and only deaths while it ran alone count to the cap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.admin import Admin
from runtime.broker.core import Broker, Completion, Failure, NackResult
from runtime.broker.keys import Keys
from runtime.broker.pool_ops import death_verdicts
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]


def ids_of(claimed: list[dict[bytes, bytes]]) -> list[str]:
    return [h[b"id"].decode() for h in claimed]


def busy(enqueue: Enqueue, broker: Broker, run: Run[Any], worker_id: str) -> None:
    """Make `worker_id` hold a job (of another queue): a worker that holds one is not idle."""
    (job_id,) = enqueue(body(queue="elsewhere"))
    (claimed,) = run(broker.fetch(["elsewhere"], worker_id=worker_id))
    assert claimed[b"id"].decode() == job_id


def lose(broker: Broker, run: Run[Any], job_id: str, verdict: str) -> NackResult:
    # The reaper's verdict holds only once the lease has lapsed: it judges at a later `now`
    now = timefmt.now_ms() + (86_400_000 if verdict == "lease_expired" else 0)
    (out,) = run(broker.fail_many([Failure(job_id=job_id, verdict=verdict, worker_id="w1")], now_ms=now))
    assert isinstance(out, NackResult)
    return out


def test_a_job_lost_beside_others_is_not_charged_and_is_given_only_to_an_idle_caller_alone(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given a job that was running beside others when its process died
    suspect, *others = enqueue(body(), body(), body(), body())
    run(broker.fetch(["default"], worker_id="w1"))
    out = lose(broker, run, suspect, "worker_lost_shared")
    # Then it is back, not charged, marked
    assert (out.state, out.attempt) == ("available", 1)
    job = read_job(redis_client, keys, suspect)
    assert "lost" not in job and job["suspect"] == "1"
    # A busy caller gets the other jobs, not the suspect (which stays where it was)
    busy(enqueue, broker, run, "w2")
    assert ids_of(run(broker.fetch(["default"], count=10, worker_id="w2"))) == others
    assert run(broker.fetch(["default"], count=10, worker_id="w2")) == []
    assert redis_client.zscore(keys.available("default"), suspect) is not None
    # An idle caller gets it, and nothing else
    enqueue(body())
    (claimed,) = run(broker.fetch(["default"], count=10, worker_id="w3", idle=True))
    assert claimed[b"id"].decode() == suspect and claimed[b"suspect"] == b"1"
    # Its completion clears the mark
    (done,) = run(broker.ack_many([Completion(job_id=suspect, worker_id="w3", claim=claimed[b"claim"].decode())]))
    assert not isinstance(done, Exception)
    assert "suspect" not in read_job(redis_client, keys, suspect)


def test_an_idle_caller_without_suspects_gets_a_normal_batch(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    ids = enqueue(body(), body(), body())
    assert ids_of(run(broker.fetch(["default"], count=10, worker_id="w1", idle=True))) == ids


def test_losses_beside_others_never_dead_letter_even_with_attempts_spent(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given a job on its last attempt, lost beside others more often than the cap
    (job_id,) = enqueue(body(retry={"max_attempts": 1}))
    for _ in range(broker.settings.worker_lost_cap + 1):
        (claimed,) = run(broker.fetch(["default"], worker_id="w1", idle=True))
        assert claimed[b"id"].decode() == job_id
        out = lose(broker, run, job_id, "worker_lost_shared")
        # Then it always comes back, to run alone
        assert out.state == "available"
    assert "lost" not in read_job(redis_client, keys, job_id)
    assert redis_client.zcard(keys.dlq) == 0


@pytest.mark.parametrize(("verdict", "kept"), [
    ("retry", False), ("nonretryable", False), ("release", True), ("lease_expired", True),
])
def test_a_suspect_is_cleared_only_by_an_outcome_of_its_own(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    verdict: str, kept: bool,
) -> None:
    # Given a suspect that ran alone
    (job_id,) = enqueue(body(retry={"max_attempts": 5, "initial_interval": "PT1H", "max_interval": "PT1H"}))
    run(broker.fetch(["default"], worker_id="w1"))
    lose(broker, run, job_id, "worker_lost_shared")
    run(broker.fetch(["default"], worker_id="w1", idle=True))
    # When its attempt ends that way
    lose(broker, run, job_id, verdict)
    # Then
    assert ("suspect" in read_job(redis_client, keys, job_id)) is kept
    if kept:  # still given only to an idle caller
        busy(enqueue, broker, run, "w2")
        assert run(broker.fetch(["default"], worker_id="w2")) == []
        assert ids_of(run(broker.fetch(["default"], worker_id="w2", idle=True))) == [job_id]


def test_a_cancelled_suspect_leaves_no_claimable_trace(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    suspect, other = enqueue(body(), body())
    run(broker.fetch(["default"], worker_id="w1"))
    lose(broker, run, suspect, "worker_lost_shared")
    run(broker.cancel(suspect))
    assert ids_of(run(broker.fetch(["default"], count=5, worker_id="w2", idle=True))) == [other]


@pytest.mark.parametrize(("held", "running", "settling", "expected"), [
    ({"a"}, {"a"}, set(), {"a": "worker_lost"}),  # alone: the loss is its own
    ({"a", "b"}, {"a", "b"}, set(), {"a": "worker_lost_shared", "b": "worker_lost_shared"}),
    ({"a", "b"}, {"a"}, set(), {"a": "worker_lost_shared", "b": "release"}),  # b was prefetched
    ({"a"}, {"a", "z"}, set(), {"a": "worker_lost_shared"}),  # z ran too (its lease had lapsed)
    ({"a", "b"}, {"a"}, {"b"}, {"a": "worker_lost_shared", "b": "outcome_lost"}),  # b's ack was on its way
    ({"a", "b"}, None, set(), {"a": "worker_lost_shared", "b": "worker_lost_shared"}),  # record unreadable
    ({"a"}, None, set(), {"a": "worker_lost_shared"}),
    ({"b"}, set(), set(), {"b": "release"}),
])
def test_death_verdicts(
    held: set[str], running: set[str] | None, settling: set[str], expected: dict[str, str],
) -> None:
    assert death_verdicts(held, running, settling) == expected


def test_a_worker_that_holds_nothing_is_idle_without_saying_so(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    # An HTTP worker cannot say it is idle: holding no job, it gets the suspect, alone
    suspect, other = enqueue(body(), body())
    run(broker.fetch(["default"], count=2, worker_id="w1"))
    lose(broker, run, suspect, "worker_lost_shared")
    run(broker.ack(other))
    assert ids_of(run(broker.fetch(["default"], count=5, worker_id="http-worker"))) == [suspect]
    # ...and so does a caller without a worker id (nothing tells it is busy)
    run(broker.fail_many([Failure(job_id=suspect, verdict="worker_lost_shared", worker_id="http-worker")],
                         now_ms=timefmt.now_ms()))
    assert ids_of(run(broker.fetch(["default"], count=5))) == [suspect]


def test_a_worker_given_a_suspect_gets_nothing_else_until_it_settles(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    # Given: an HTTP-style worker (it never says whether it is idle) that got a suspect
    suspect, *others = enqueue(body(), body(), body())
    run(broker.fetch(["default"], worker_id="w1"))
    lose(broker, run, suspect, "worker_lost_shared")
    (claimed,) = run(broker.fetch(["default"], count=5, worker_id="http-worker"))
    assert claimed[b"id"].decode() == suspect
    # When it asks for more while the suspect runs: nothing (the broker enforces the isolation)
    assert run(broker.fetch(["default"], count=5, worker_id="http-worker")) == []
    # Then, once the suspect is settled, it gets the rest
    run(broker.ack(suspect))
    assert sorted(ids_of(run(broker.fetch(["default"], count=5, worker_id="http-worker")))) == sorted(others)


def test_a_job_lost_beside_others_again_and_again_is_dead_lettered_at_twice_the_cap(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    (job_id,) = enqueue(body())
    cap = broker.settings.worker_lost_cap
    for n in range(1, 2 * cap + 1):
        (claimed,) = run(broker.fetch(["default"], worker_id="w1", idle=True))
        out = lose(broker, run, job_id, "worker_lost_shared")
        assert out.state == ("discarded" if n == 2 * cap else "available")
    assert redis_client.zscore(keys.dlq, job_id) is not None


def test_suspects_in_a_paused_queue_do_not_make_a_pool_make_way(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    (job_id,) = enqueue(body())
    run(broker.fetch(["default"], worker_id="w1"))
    lose(broker, run, job_id, "worker_lost_shared")
    assert run(broker.suspects_waiting(["default"])) == 1
    run(Admin(broker).set_paused("default", True))
    assert run(broker.suspects_waiting(["default"])) == 0


def test_a_dead_letter_retry_of_a_suspect_leaves_it_a_plain_job(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    (job_id,) = enqueue(body())
    for _ in range(broker.settings.worker_lost_cap):
        run(broker.fetch(["default"], worker_id="w1", idle=True))
        lose(broker, run, job_id, "worker_lost")
    assert redis_client.zscore(keys.dlq, job_id) is not None
    run(Admin(broker).dead_letter_retry(job_id))
    job = read_job(redis_client, keys, job_id)
    assert "suspect" not in job and "lost" not in job
    assert ids_of(run(broker.fetch(["default"], count=5, worker_id="w2", idle=False))) == [job_id]


def test_an_idle_pools_suspect_is_one_it_takes_its_version_and_room(broker: Broker, run: Run[Any], enqueue: Any) -> None:
    """A suspect goes to an idle pool, alone, but only to one that takes its job's version and
    has room for its type (a rolling deploy: the old pools must not run the new version's job)."""
    from runtime.broker.job_versions import parse_range

    (job,) = enqueue(dict(body("t.v"), version="3.0"))
    (got,) = run(broker.fetch(["default"], worker_id="w1"))
    run(broker.fail_many([Failure(job_id=job, verdict="worker_lost_shared", worker_id="w1",
                                  claim=got[b"claim"].decode())], now_ms=timefmt.now_ms()))
    assert run(broker.fetch(["default"], worker_id="w3", idle=True, type_room={"t.v": 0})) == []
    assert run(broker.fetch(["default"], worker_id="w2", idle=True,
                            version_ranges={"t.v": parse_range(">=1.0 <2.0")})) == []
    (taken,) = run(broker.fetch(["default"], worker_id="w4", idle=True,
                                version_ranges={"t.v": parse_range(">=3.0")}))
    assert taken[b"id"].decode() == job
