"""Per-key rate limits, enforced by the claim itself: concurrency, sliding window, throttle, the
on_limit actions, overrides, queue-level concurrency, and every way out of `active` freeing its
slot. The autouse integrity check also asserts, after each test, that a keyed job is in its key's
active set exactly while it is active."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import Broker, Failure
from runtime.broker.queue_config import QueueConfig, QueueConfigRequest
from runtime.broker.rate_limits import OverrideRequest, RateLimits, policy_fields
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.envelope import ErrorInfo
from runtime.errors import InvalidRequest
from tests.broker.conftest import Run, body


def limited(key: str, queue: str = "rl", **policy: Any) -> dict[str, Any]:
    return body("t.rl", queue=queue, rate_limit={"key": key, **policy})


def ids(jobs: list[dict[bytes, bytes]]) -> list[str]:
    return [j[b"id"].decode() for j in jobs]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``clock(ms)`` moves the broker's clock forward by ms (the claim reads timefmt.now_ms)."""
    start = timefmt.now_ms()
    offset = [0]
    monkeypatch.setattr(timefmt, "now_ms", lambda: start + offset[0])

    def advance(ms: int) -> None:
        offset[0] += ms

    return advance


def test_a_key_at_its_concurrency_is_skipped_and_the_next_eligible_job_is_claimed(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    first, second = enqueue(limited("api", concurrency=1), limited("api", concurrency=1))
    (other,) = enqueue(limited("other", concurrency=1))
    got = run(broker.fetch(["rl"], count=3, worker_id="w"))
    assert ids(got) == [first, other]
    job = run(broker.get(second))
    assert job[b"state"] == b"available"
    assert run(broker.redis.zscore(broker.keys.available("rl"), second)) is not None  # in its place
    assert run(broker.fetch(["rl"], count=3, worker_id="w")) == []
    run(broker.ack(first, worker_id="w"))
    assert ids(run(broker.fetch(["rl"], count=3, worker_id="w"))) == [second]


def test_a_held_job_keeps_its_place_ahead_of_later_jobs_of_its_key(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    jobs = enqueue(*(limited("k", concurrency=1) for _ in range(4)))
    for expected in jobs:
        (got,) = run(broker.fetch(["rl"], count=4, worker_id="w"))
        assert got[b"id"].decode() == expected
        run(broker.ack(expected, worker_id="w"))


@pytest.mark.parametrize("way_out", ["ack", "retry", "discard", "cancel", "handback", "lease_expired", "worker_lost"])
def test_every_way_out_of_active_frees_the_slot(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], way_out: str, clock: Callable[[int], None],
) -> None:
    first, second = enqueue(limited("one", concurrency=1), limited("one", concurrency=1))
    (claimed,) = run(broker.fetch(["rl"], count=2, worker_id="w"))
    assert claimed[b"id"].decode() == first
    claim = claimed[b"claim"].decode()
    err = b'{"code":"handler_error","message":"no"}'
    verdicts = {"retry": "retry", "discard": "discard", "handback": "release", "lease_expired": "lease_expired",
                "worker_lost": "worker_lost"}
    if way_out == "ack":
        run(broker.ack(first, worker_id="w"))
    elif way_out == "cancel":
        run(broker.cancel(first))
        # The cancelled run may go on until its worker hears of it, at the latest its lease: it
        # keeps the slot until then.
        assert run(broker.fetch(["rl"], count=2, worker_id="w2")) == []
        clock(int(claimed[b"visible_until"]) + 1 - timefmt.now_ms())
    else:
        if way_out == "lease_expired":
            clock(int(claimed[b"visible_until"]) + 1 - timefmt.now_ms())
        now = timefmt.now_ms()
        (result,) = run(broker.fail_many([Failure(job_id=first, verdict=verdicts[way_out], error=err, worker_id="w",
                                                  claim=claim)], now_ms=now))
        assert not isinstance(result, Exception), result
    # The slot is free: a job of the key is claimed. A job handed back through no doing of its own
    # (released, its lease spent, its run lost) is back at the head of its queue, so it comes
    # first (a lost run's job, now a suspect, alone).
    expected = first if way_out in ("handback", "lease_expired", "worker_lost") else second
    assert ids(run(broker.fetch(["rl"], count=2, worker_id="w2"))) == [expected]


def test_keys_are_independent(broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]]) -> None:
    a1, _a2, b1, _b2 = enqueue(limited("a", concurrency=1), limited("a", concurrency=1),
                               limited("b", concurrency=1), limited("b", concurrency=1))
    assert ids(run(broker.fetch(["rl"], count=4, worker_id="w"))) == [a1, b1]


def test_the_sliding_window_allows_n_starts_per_period(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    jobs = enqueue(*(limited("w", rate={"limit": 2, "period": "PT1M"}) for _ in range(3)))
    assert ids(run(broker.fetch(["rl"], count=3, worker_id="w"))) == jobs[:2]
    clock(30_000)
    assert run(broker.fetch(["rl"], count=3, worker_id="w")) == []
    clock(30_001)  # the first two starts have left the window
    assert ids(run(broker.fetch(["rl"], count=3, worker_id="w"))) == jobs[2:]


def test_a_bare_rate_with_a_period_word_is_a_window(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    first, _ = enqueue(limited("rps", rate=1, period="second"), limited("rps", rate=1, period="second"))
    assert ids(run(broker.fetch(["rl"], count=2, worker_id="w"))) == [first]


def test_a_throttle_spaces_starts_evenly(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    jobs = enqueue(*(limited("t", throttle={"limit": 2, "period": "PT1S"}) for _ in range(3)))
    assert ids(run(broker.fetch(["rl"], count=3, worker_id="w"))) == jobs[:1]
    clock(499)
    assert run(broker.fetch(["rl"], count=3, worker_id="w")) == []
    clock(1)
    assert ids(run(broker.fetch(["rl"], count=3, worker_id="w"))) == jobs[1:2]


def test_on_limit_reschedule_makes_the_job_scheduled_for_when_the_window_allows(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    first, second = enqueue(*(limited("r", rate={"limit": 1, "period": "PT10S"}, on_limit="reschedule")
                              for _ in range(2)))
    started = timefmt.now_ms()
    assert ids(run(broker.fetch(["rl"], count=2, worker_id="w"))) == [first]
    job = run(broker.get(second))
    assert job[b"state"] == b"scheduled"
    assert int(job[b"next_attempt_at"]) == started + 10_000
    clock(10_000)
    assert ids(run(broker.fetch(["rl"], count=2, worker_id="w"))) == [second]


def test_on_limit_drop_discards_the_job_with_a_rate_limited_error(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    first, second = enqueue(*(limited("d", concurrency=1, on_limit="drop") for _ in range(2)))
    assert ids(run(broker.fetch(["rl"], count=2, worker_id="w"))) == [first]
    job = run(broker.get(second))
    assert job[b"state"] == b"discarded"
    assert msgspec.json.decode(job[b"error"])["code"] == "rate_limited"
    assert run(broker.redis.zscore(broker.keys.ended("rl", "discarded"), second)) is not None


def test_the_limit_is_exceeded_and_released_as_events(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    first, second = enqueue(limited("e", concurrency=1), limited("e", concurrency=1))
    run(broker.fetch(["rl"], count=2, worker_id="w"))
    run(broker.ack(first, worker_id="w"))
    run(broker.fetch(["rl"], count=2, worker_id="w"))
    events = run(broker.redis.xrange(broker.keys.events))
    kinds = [(e[b"type"].decode(), msgspec.json.decode(e[b"data"])) for _, e in events
             if e[b"type"].startswith(b"rate_limit.")]
    assert [k for k, _ in kinds] == ["rate_limit.exceeded", "rate_limit.released"]
    assert kinds[0][1] == {"key": "e", "strategy": "concurrency", "limit": 1, "current": 1}
    assert kinds[1][1] == {"key": "e", "job_id": second}


def test_inspection_shows_the_partition(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    enqueue(*(limited("seen", concurrency=2, rate={"limit": 10, "period": "PT1M"}) for _ in range(3)))
    run(broker.fetch(["rl"], count=3, worker_id="w"))
    view = run(RateLimits(broker.redis, broker.keys.prefix).inspect("seen", timefmt.now_ms()))
    assert view["key"] == "seen"
    assert view["concurrency"] == {"limit": 2, "active": 2, "available": 0}
    assert view["rate"]["current_count"] == 2 and view["rate"]["limit"] == 10
    assert view["waiting_count"] == 1
    empty = run(RateLimits(broker.redis, broker.keys.prefix).inspect("never-used", timefmt.now_ms()))
    assert empty == {"key": "never-used", "active": 0, "waiting_count": 0}


def test_an_override_stops_a_key_until_it_expires_or_is_cleared(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    limits = RateLimits(broker.redis, broker.keys.prefix)
    (job,) = enqueue(limited("down"))
    until = timefmt.format_ms(timefmt.now_ms() + 60_000)
    view = run(limits.override("down", OverrideRequest(concurrency=0, expires_at=until), timefmt.now_ms()))
    assert view["concurrency"]["limit"] == 0
    assert run(broker.fetch(["rl"], worker_id="w")) == []
    clock(60_000)
    assert ids(run(broker.fetch(["rl"], worker_id="w"))) == [job]
    with pytest.raises(InvalidRequest):
        run(limits.override("down", OverrideRequest(concurrency=0, expires_at=until), timefmt.now_ms()))


def test_a_missed_release_heals_when_the_key_is_full(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    (job,) = enqueue(limited("heal", concurrency=1))
    (ended,) = enqueue(limited("heal", concurrency=1, queue="elsewhere"))
    run(broker.fetch(["elsewhere"], worker_id="w"))
    run(broker.ack(ended, worker_id="w"))
    # A slot held by a job that is not active any more (as a lost release would leave it):
    run(broker.redis.sadd(f"{broker.keys.prefix}rl-active:heal", ended))
    assert ids(run(broker.fetch(["rl"], worker_id="w"))) == [job]


def test_queue_concurrency_bounds_its_active_jobs_across_workers(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    run(QueueConfig(broker.redis, broker.keys).update("qc", msgspec.convert({"concurrency": 2}, QueueConfigRequest)))
    jobs = enqueue(*(body("t.x", queue="qc") for _ in range(4)))
    assert ids(run(broker.fetch(["qc"], count=1, worker_id="a"))) == jobs[:1]
    assert ids(run(broker.fetch(["qc"], count=4, worker_id="b"))) == jobs[1:2]
    run(broker.ack(jobs[0], worker_id="a"))
    assert ids(run(broker.fetch(["qc"], count=4, worker_id="a"))) == jobs[2:3]


def test_a_keyless_concurrency_limits_the_queue_partition() -> None:
    fields = policy_fields({"concurrency": 3}, "mail")
    assert fields["rl_key"] == "queue:mail"
    assert policy_fields({"max_per_second": 5}, "mail") == {"rl_max": "5", "rl_window_ms": "1000"}


@pytest.mark.parametrize("policy", [
    {"key": "bad key"}, {"key": ""}, {"key": "k", "concurrency": -1}, {"key": "k", "concurrency": "2"},
    {"key": "k", "rate": {"limit": 0, "period": "PT1S"}}, {"key": "k", "rate": {"limit": 1, "period": "soon"}},
    {"key": "k", "on_limit": "explode"}, {"key": "k", "burst": 3}, {"key": "k" * 300}, "k",
    {"key": "k", "throttle": {"limit": 1, "period": "P90D"}},
])
def test_a_bad_policy_is_refused_at_enqueue(policy: Any) -> None:
    with pytest.raises(InvalidRequest):
        policy_fields(policy, "q")


def test_a_handler_reporting_its_downstream_limit_stops_the_key_until_then(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    first, second = enqueue(limited("upstream", concurrency=5), limited("upstream", concurrency=5))
    (claimed,) = run(broker.fetch(["rl"], count=1, worker_id="w"))
    until = timefmt.now_ms() + 30_000
    error = ErrorInfo(message="429 from the API", rate_limit_until=timefmt.format_ms(until))
    (result,) = run(broker.fail_many([Failure(job_id=first, verdict="retry", worker_id="w",
                                              claim=claimed[b"claim"].decode(),
                                              error=failures.error_record(error, timefmt.now_ms()))],
                                     now_ms=timefmt.now_ms()))
    assert not isinstance(result, Exception)
    assert run(broker.fetch(["rl"], count=2, worker_id="w")) == []  # the other job waits too
    view = run(RateLimits(broker.redis, broker.keys.prefix).inspect("upstream", timefmt.now_ms()))
    assert view["paused_until"] == timefmt.format_ms(until)
    clock(30_000)  # the key starts again: the waiting job, and the failed one's retry (due by now)
    assert sorted(ids(run(broker.fetch(["rl"], count=2, worker_id="w")))) == sorted([first, second])


def test_a_malformed_rate_limit_until_is_refused_where_the_error_is_decoded() -> None:
    with pytest.raises(msgspec.ValidationError, match="rate_limit_until"):
        msgspec.json.decode(b'{"message": "x", "rate_limit_until": "soon"}', type=ErrorInfo)


def test_a_shorter_window_in_the_same_key_keeps_the_longer_windows_starts(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    hourly = {"limit": 2, "period": "PT1H"}
    (a,) = enqueue(limited("mix", rate=hourly))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [a]
    clock(2_000)
    (b,) = enqueue(limited("mix", rate={"limit": 100, "period": "PT1S"}))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [b]
    clock(10)
    enqueue(limited("mix", rate=hourly))
    assert run(broker.fetch(["rl"], count=1, worker_id="w")) == []  # a and b started within the hour


def test_a_job_without_a_window_counts_against_its_keys_window(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    enqueue(limited("shared", rate={"limit": 1, "period": "PT1H"}))  # registers the key's window
    (plain,) = enqueue(body("t.rl", queue="rl", priority=10, rate_limit={"key": "shared", "concurrency": 5}))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [plain]  # first by its priority
    assert run(broker.fetch(["rl"], count=1, worker_id="w")) == []  # its start used the hour's one


def test_a_cancelled_waiting_workflow_step_leaves_its_keys_unfinished_jobs(broker: Broker, run: Run[Any]) -> None:
    steps = [{"type": "s.one", "args": [1]}, {"type": "s.two", "args": [2]},
             {"type": "s.three", "args": [3], "options": {"rate_limit": {"key": "wf", "concurrency": 1}}}]
    run(Workflows(broker).create(WorkflowRequest(type="chain", steps=steps)))
    (first,) = run(broker.fetch(["default"]))
    run(broker.ack(first[b"id"].decode()))
    run(broker.advance_workflows())
    (second,) = run(broker.fetch(["default"]))
    run(broker.cancel(second[b"id"].decode()))
    run(broker.advance_workflows())  # the waiting third step is cancelled by the workflow
    assert run(broker.redis.smembers(f"{broker.keys.prefix}rl-jobs:wf")) == set()


def test_replacing_a_holder_its_limit_rescheduled_keeps_the_replacement_claimable(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    unique = {"keys": ["type"], "on_conflict": "replace_except_schedule"}
    rl = {"key": "rs", "concurrency": 1, "on_limit": "reschedule"}
    (first,) = enqueue(body("t.other", queue="rl", rate_limit=rl))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [first]
    (holder,) = enqueue(body("t.digest", queue="rl", rate_limit=rl, unique=unique))
    assert run(broker.fetch(["rl"], count=1, worker_id="w")) == []
    assert run(broker.get(holder))[b"state"] == b"scheduled"  # rescheduled by its limit
    (replacement,) = enqueue(body("t.digest", queue="rl", rate_limit=rl, unique=unique))
    assert run(broker.get(replacement))[b"state"] == b"scheduled"
    run(broker.ack(first, worker_id="w"))
    clock(5_000)  # past the replacement's due time (at most 5 s after the hold), the key has room
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [replacement]


def test_an_eligible_job_behind_a_long_run_of_held_jobs_is_reached_within_a_few_fetches(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    (running,) = enqueue(limited("hot", concurrency=1))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [running]
    enqueue(*(limited("hot", concurrency=1) for _ in range(1_000)))
    (free,) = enqueue(limited("cold", concurrency=1))
    got = [ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) for _ in range(3)]
    assert [free] in got, got


def test_one_fetch_reschedules_a_bounded_number_of_jobs(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    rl = {"concurrency": 1, "on_limit": "reschedule"}
    (running,) = enqueue(limited("many", **rl))
    assert ids(run(broker.fetch(["rl"], count=1, worker_id="w"))) == [running]
    waiting = enqueue(*(limited("many", **rl) for _ in range(2_000)))
    run(broker.fetch(["rl"], count=1, worker_id="w"))
    states = [run(broker.get(j))[b"state"] for j in waiting]
    assert 0 < states.count(b"scheduled") <= 3 * 256  # the head, one look past it, the second pass


def test_a_rescheduled_job_shows_when_it_is_due(broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]]) -> None:
    first, second = enqueue(*(limited("when", rate={"limit": 1, "period": "PT1M"}, on_limit="reschedule")
                              for _ in range(2)))
    run(broker.fetch(["rl"], count=2, worker_id="w"))
    job = run(broker.get(second))
    assert job[b"scheduled_at"].decode() == timefmt.format_ms(int(job[b"next_attempt_at"]))


def test_a_job_cancelled_while_running_is_not_deleted_while_its_run_may_go_on(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], clock: Callable[[int], None],
) -> None:
    """Its run keeps its key's slot until its lease; deleting it then would free the slot (or
    leave the store inconsistent) while the run goes on beside the key's next job."""
    from runtime.broker.job_admin import JobAdmin
    from runtime.errors import Conflict

    first, _second = enqueue(limited("k1", concurrency=1), limited("k1", concurrency=1))
    (claimed,) = run(broker.fetch(["rl"], worker_id="w"))
    assert claimed[b"id"].decode() == first
    run(broker.cancel(first))
    with pytest.raises(Conflict, match="cancelled while running"):
        run(JobAdmin(broker).delete(first))
    assert run(broker.fetch(["rl"], worker_id="w2")) == []  # the slot is still the cancelled run's


def test_a_freed_slot_wakes_every_queue_whose_jobs_the_key_held(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], redis_client: Any,
) -> None:
    # Given a key at its concurrency with its running job in one queue and held ones in two others
    (running,) = enqueue(limited("shared", queue="rl-a", concurrency=1))
    (held_b,) = enqueue(limited("shared", queue="rl-b", concurrency=1))
    (held_c,) = enqueue(limited("shared", queue="rl-c", concurrency=1))
    assert ids(run(broker.fetch(["rl-a"], worker_id="w"))) == [running]
    assert run(broker.fetch(["rl-b"], worker_id="w")) == [] and run(broker.fetch(["rl-c"], worker_id="w")) == []
    wakes = redis_client.pubsub()
    wakes.subscribe(broker.keys.prefix + "notify:rl-b", broker.keys.prefix + "notify:rl-c")
    for _ in range(2):
        assert wakes.get_message(timeout=5)["type"] == "subscribe"
    # When the running job ends (its slot frees)
    run(broker.ack(running, worker_id="w"))
    # Then the idle workers of both queues that hold the key's jobs are woken, not only its own
    woken = {wakes.get_message(timeout=5)["channel"] for _ in range(2)}
    wakes.close()
    assert woken == {(broker.keys.prefix + f"notify:{q}").encode() for q in ("rl-b", "rl-c")}
    assert ids(run(broker.fetch(["rl-b", "rl-c"], worker_id="w"))) == [held_b]
