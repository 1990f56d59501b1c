"""Where a job handed back to `available` (nack.lua) takes its place in its queue.

A job handed back through no doing of its own (released by a draining or dying worker, its lease
spent, its run lost with its process beside others, its outcome lost with its process) had waited
its turn already: it goes back to the head of its priority band, never behind the whole backlog,
and jobs handed back together keep their order. A requeue its worker asked for joins the end, so
a job that keeps requeueing itself cannot starve the others; so does a job that alone can have
killed its process (worker_lost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runtime import timefmt
from runtime.broker.core import Broker, Failure
from runtime.broker.integrity import check_integrity
from tests.broker.conftest import Run, body

Enqueue = Callable[..., list[str]]
BOOM = b'{"code":"handler_error","message":"boom"}'


def claim_first(broker: Broker, run: Run[Any], now_ms: int) -> dict[bytes, bytes]:
    (claimed,) = run(broker.fetch(["default"], count=1, worker_id="w1", visibility_ms=5_000, now_ms=now_ms))
    return claimed


def hand_back(broker: Broker, run: Run[Any], claimed: dict[bytes, bytes], verdict: str, now_ms: int,
              worker_id: str = "w1") -> None:
    failure = Failure(job_id=claimed[b"id"].decode(), verdict=verdict, error=BOOM, worker_id=worker_id,
                      claim=claimed[b"claim"].decode())
    (result,) = run(broker.fail_many([failure], now_ms=now_ms))
    assert not isinstance(result, Exception), result
    assert result.state == "available", result


def claim_order(broker: Broker, run: Run[Any], now_ms: int) -> list[str]:
    """Every available job, in the order fetches hand them out (one at a time, by an idle
    worker each: a suspect is given alone, to an idle caller)."""
    order = []
    for n in range(10):
        got = run(broker.fetch(["default"], count=1, worker_id=f"idle-{n}", now_ms=now_ms))
        if not got:
            break
        order.append(got[0][b"id"].decode())
    return order


@pytest.mark.parametrize("verdict", ["release", "lease_expired", "worker_lost_shared", "outcome_lost"])
def test_a_job_handed_back_through_no_doing_of_its_own_is_next(
    broker: Broker, run: Run[Any], enqueue: Enqueue, verdict: str,
) -> None:
    # Given: three jobs waiting; the first is claimed, and the other two wait behind it
    now = timefmt.now_ms()
    first, second, third = enqueue(body(), body(), body(), now_ms=now)
    claimed = claim_first(broker, run, now)
    assert claimed[b"id"].decode() == first
    # When: it comes back (a spent lease: once its deadline has passed)
    later = int(claimed[b"visible_until"]) + 1 if verdict == "lease_expired" else now
    hand_back(broker, run, claimed, verdict, later)
    # Then: it is first again, ahead of the jobs that were behind it
    assert claim_order(broker, run, later) == [first, second, third]


@pytest.mark.parametrize("verdict", ["requeue", "worker_lost"])
def test_a_requeue_the_worker_asked_for_or_a_loss_of_its_own_joins_the_end(
    broker: Broker, run: Run[Any], enqueue: Enqueue, verdict: str,
) -> None:
    now = timefmt.now_ms()
    first, second, third = enqueue(body(), body(), body(), now_ms=now)
    hand_back(broker, run, claim_first(broker, run, now), verdict, now)
    # (a worker_lost job is a suspect: an idle worker gets it first, alone, wherever it waits)
    busy = [h[b"id"].decode() for h in run(broker.fetch(["default"], count=3, worker_id="busy", idle=False,
                                                          now_ms=now))]
    assert busy == [second, third] if verdict == "worker_lost" else busy == [second, third, first]
    if verdict == "worker_lost":
        assert run(broker.redis.zrange(broker.keys.available("default"), 0, -1)) == [first.encode()]


def test_jobs_handed_back_together_keep_their_order(broker: Broker, run: Run[Any], enqueue: Enqueue) -> None:
    # Given: three jobs claimed in one fetch, two more waiting behind them
    now = timefmt.now_ms()
    jobs = enqueue(*(body() for _ in range(5)), now_ms=now)
    claimed = run(broker.fetch(["default"], count=3, worker_id="w1", now_ms=now))
    assert [h[b"id"].decode() for h in claimed] == jobs[:3]
    # When: all three come back in one call, in their claim order (a stop, a dead pool)
    failures = [Failure(job_id=h[b"id"].decode(), verdict="release", worker_id="w1", claim=h[b"claim"].decode())
                for h in claimed]
    assert not any(isinstance(r, Exception) for r in run(broker.fail_many(failures, now_ms=now)))
    # Then: they are first again, in that order
    assert claim_order(broker, run, now) == jobs


def test_an_outcome_lost_again_and_again_is_dead_lettered_at_last(
    broker: Broker, run: Run[Any], enqueue: Enqueue,
) -> None:
    """Its handler returned and its process died before the outcome was recorded: it runs again,
    first. One whose outcome keeps dying with its process is not re-run for ever."""
    now = timefmt.now_ms()
    (job_id,) = enqueue(body(retry={"max_attempts": 1, "on_exhaustion": "dead_letter"}), now_ms=now)
    states = []
    for _ in range(2 * broker.settings.worker_lost_cap):
        claimed = claim_first(broker, run, now)
        failure = Failure(job_id=job_id, verdict="outcome_lost", error=BOOM, worker_id="w1",
                          claim=claimed[b"claim"].decode())
        (result,) = run(broker.fail_many([failure], now_ms=now))
        states.append(result.state)
    assert states == ["available"] * (2 * broker.settings.worker_lost_cap - 1) + ["discarded"]
    assert run(broker.redis.zscore(broker.keys.dlq, job_id)) is not None


def test_the_head_is_the_head_of_its_own_priority_band(broker: Broker, run: Run[Any], enqueue: Enqueue) -> None:
    # Given: a job claimed; then a more urgent job and one of the same priority arrive
    now = timefmt.now_ms()
    (first,) = enqueue(body(), now_ms=now)
    claimed = claim_first(broker, run, now)
    same, urgent, lower = enqueue(body(), body(priority=10), body(priority=-5), now_ms=now)
    # When: the claimed job is released
    hand_back(broker, run, claimed, "release", now)
    # Then: it goes before the jobs of its own priority, never ahead of a higher one
    assert claim_order(broker, run, now) == [urgent, first, same, lower]


def test_the_head_never_leaves_its_band_however_low_the_numbers_before_it(
    broker: Broker, run: Run[Any], enqueue: Enqueue,
) -> None:
    # Given: the first job ever enqueued here (the lowest sequence number there is), left waiting
    # as a suspect at the head of the band (a busy worker passes over it), and two jobs behind it
    now = timefmt.now_ms()
    suspect, second, third = enqueue(body(), body(), body(), now_ms=now)
    hand_back(broker, run, claim_first(broker, run, now), "worker_lost_shared", now)

    def busy_fetch(count: int) -> list[dict[bytes, bytes]]:
        got = run(broker.fetch(["default"], count=count, worker_id="busy", idle=False, now_ms=now))
        assert suspect.encode() not in [h[b"id"] for h in got]
        return got

    # When: the jobs behind it are put at the head again and again, below its number (1), past 0
    for _ in range(3):
        for claimed in busy_fetch(2):
            hand_back(broker, run, claimed, "release", now, worker_id="busy")
    (urgent,) = enqueue(body(priority=1), now_ms=now)
    # Then: they keep their order and their band (each score in its priority's band): after the
    # more urgent job, never before it
    assert run(check_integrity(broker.redis, broker.keys)) == []
    assert [h[b"id"].decode() for h in busy_fetch(3)] == [urgent, second, third]
