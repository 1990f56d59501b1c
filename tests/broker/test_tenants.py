"""Multi-tenancy in the scripts: a tenant's fetch claims only its jobs, tenants take turns within
a queue and priority (the fair-queuing tags of enqueue.lua), and the per-tenant records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.records import job_from_body
from runtime.broker.tenants import Tenants
from runtime.envelope import ErrorInfo
from tests.broker.conftest import Run, body

Enqueue = Callable[..., list[str]]


def tenant_body(tenant: str | None, job_type: str = "t.job", **options: Any) -> dict[str, Any]:
    out = body(job_type, **options)
    if tenant is not None:
        out["meta"] = {"tenant_id": tenant}
    return out


def ids_of(jobs: list[dict[bytes, bytes]]) -> list[str]:
    return [h[b"id"].decode() for h in jobs]


def enqueue_many(broker: Broker, run: Run[Any], tenant: str | None, n: int, **options: Any) -> list[str]:
    """n jobs of one tenant, in enqueue calls of 1,000 (the HTTP batch bound)."""
    ids: list[str] = []
    for start in range(0, n, 1_000):
        now = timefmt.now_ms()
        jobs = [job_from_body(msgspec.json.encode(tenant_body(tenant, **options)), now_ms=now)
                for _ in range(min(1_000, n - start))]
        ids += [d.job_id for d in run(broker.enqueue(jobs, now_ms=now))]
    return ids


def drain(broker: Broker, run: Run[Any], queue: str = "default", count: int = 10) -> list[str]:
    """Claim and complete everything, in claim order."""
    order: list[str] = []
    while claimed := ids_of(run(broker.fetch([queue], count=count))):
        order += claimed
        assert all(not isinstance(r, Exception) for r in run(broker.ack_many([Completion(job_id=i) for i in claimed])))
    return order


def test_a_tenants_fetch_claims_only_its_jobs_and_leaves_the_others_in_place(
    enqueue: Enqueue, broker: Broker, run: Run[Any],
) -> None:
    # Given: jobs of two tenants and one without, interleaved in one queue
    a1, b1, none1, a2 = enqueue(tenant_body("a"), tenant_body("b"), tenant_body(None), tenant_body("a"))
    before = [m.decode() for m in run(broker.redis.zrange(broker.keys.available("default"), 0, -1))]
    # When: tenant b fetches more than it has
    claimed = ids_of(run(broker.fetch(["default"], count=5, tenant="b")))
    # Then: its one job; the others are still there, in their order
    assert claimed == [b1]
    assert ids_of(run(broker.fetch(["default"], count=5))) == [i for i in before if i != b1]
    assert {a1, none1, a2} <= set(before)


def test_a_tenants_fetch_reaches_its_job_behind_more_than_the_scan_bound(broker: Broker, run: Run[Any]) -> None:
    # Given: 600 jobs of tenant a queued ahead of b's one (an unfair order, made with priority)
    enqueue_many(broker, run, "a", 600, priority=5)
    (b_job,) = enqueue_many(broker, run, "b", 1)
    # When: b fetches; each call looks 256 entries past the head and 256 more from where the last
    # such look stopped
    got = [ids_of(run(broker.fetch(["default"], count=1, tenant="b"))) for _ in range(3)]
    # Then: b's job is reached within a few calls, and a's jobs are all still available
    assert [b_job] in got, got
    assert run(broker.redis.zcard(broker.keys.available("default"))) == 600
    run(broker.ack(b_job))
    drain(broker, run)


def test_a_second_tenant_is_not_starved_by_a_burst_of_the_first(broker: Broker, run: Run[Any]) -> None:
    # Given: tenant a enqueues 10,000 jobs, then tenant b 100, in one queue
    enqueue_many(broker, run, "a", 10_000)
    b_jobs = set(enqueue_many(broker, run, "b", 100))
    # When: the queue is drained, 10 per fetch
    order = drain(broker, run)
    # Then: b's jobs interleave with a's (its fair share is one claim in two while both wait)
    positions = [n for n, job_id in enumerate(order, 1) if job_id in b_jobs]
    print(f"b's 100 jobs claimed at positions {positions[0]}..{positions[-1]} of {len(order)}")
    assert len(order) == 10_100 and len(positions) == 100
    assert positions[-1] <= 300


def test_without_tenants_the_order_stays_fifo(broker: Broker, run: Run[Any]) -> None:
    # The same burst without tenants: the later jobs wait for the whole backlog (FIFO).
    enqueue_many(broker, run, None, 1_000)
    late = set(enqueue_many(broker, run, None, 10))
    order = drain(broker, run, count=50)
    assert [n for n, job_id in enumerate(order, 1) if job_id in late] == list(range(1_001, 1_011))


def test_priority_comes_before_tenant_turns(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: tenant a's backlog at priority 5, then b's jobs at priority 0 and one of a's at 9
    a_jobs = enqueue(*(tenant_body("a", priority=5) for _ in range(3)))
    b_low = enqueue(tenant_body("b"))
    (a_urgent,) = enqueue(tenant_body("a", priority=9))
    # Then: the priorities decide first; the tags only order jobs of equal priority
    assert ids_of(run(broker.fetch(["default"], count=5))) == [a_urgent, *a_jobs, *b_low]


def test_a_retried_job_rejoins_the_end_of_its_tenants_turns(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: a1 a2 a3 of tenant a and b1 b2 of tenant b, interleaved by their tags
    a1, a2, a3 = enqueue(*(tenant_body("a", retry={"max_attempts": 3, "jitter": False}) for _ in range(3)))
    b1, b2 = enqueue(tenant_body("b"), tenant_body("b"))
    (first,) = ids_of(run(broker.fetch(["default"], count=1)))
    assert first == a1
    # When: a1 fails and comes back (its retry is due at the next fetch, which promotes it)
    run(broker.nack(a1, ErrorInfo(message="again")))
    order = ids_of(run(broker.fetch(["default"], count=5, now_ms=timefmt.now_ms() + 60_000)))
    # Then: it waits behind a's other jobs, the tenants taking turns (equal turns in either order)
    assert set(order[:2]) == {a2, b1} and set(order[2:4]) == {a3, b2} and order[4] == a1


def test_a_tenant_that_drained_its_queue_starts_afresh(broker: Broker, run: Run[Any]) -> None:
    # Given: tenant a ran 500 jobs through the queue, alone, and it is empty again
    enqueue_many(broker, run, "a", 500)
    drain(broker, run, count=100)
    # When: b and then a enqueue
    b_jobs = enqueue_many(broker, run, "b", 3)
    a_jobs = enqueue_many(broker, run, "a", 3)
    # Then: a's past does not put it behind b's jobs; they take turns (equal turns in either order)
    order = ids_of(run(broker.fetch(["default"], count=6)))
    assert order[0] == b_jobs[0] and order[5] == a_jobs[2]
    assert set(order[1:3]) == {b_jobs[1], a_jobs[0]} and set(order[3:5]) == {b_jobs[2], a_jobs[1]}


def test_a_priority_change_gives_a_tenants_job_a_turn_in_its_new_band(
    broker: Broker, run: Run[Any], enqueue: Enqueue,
) -> None:
    # Given: a's backlog of 100, and b's 60 jobs at priority 5
    a_jobs = enqueue_many(broker, run, "a", 100)
    enqueue_many(broker, run, "b", 60, priority=5)
    # When: a's last job is raised to priority 5
    run(broker.scripts.call("set_priority", keys=[broker.keys.prefix],
                            args=[str(timefmt.now_ms()), "0", a_jobs[-1], "5"]))
    # Then: it gets a's first turn in that band (behind at most two of b's), not its old place,
    # which was 100 turns of a deep
    assert a_jobs[-1] in ids_of(run(broker.fetch(["default"], count=3)))
    drain(broker, run)


def test_the_tenant_records_follow_every_way_a_job_ends(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    tenants = Tenants(broker.redis, broker.keys)
    done, failed, cancelled, left = enqueue(*(tenant_body("acme", retry={"max_attempts": 1}) for _ in range(4)))
    enqueue(tenant_body("acme", scheduled_at="+PT1H"))
    assert ids_of(run(broker.fetch(["default"], count=2))) == [done, failed]
    run(broker.ack(done))
    run(broker.nack(failed, ErrorInfo(message="no")))
    run(broker.cancel(cancelled))
    stats = run(tenants.stats("acme"))
    assert stats is not None
    assert stats["total_jobs"] == 5 and stats["unfinished_jobs"] == 2
    assert stats["jobs"]["available"] == 1 and stats["jobs"]["scheduled"] == 1
    assert stats["ended"] == {"completed": 1, "discarded": 1, "cancelled": 1}
    assert run(broker.get(left))[b"tenant"] == b"acme"
    assert run(tenants.stats("nobody")) is None
    assert run(tenants.listing(limit=10, offset=0)) == (1, ["acme"])


def test_another_tenants_fetch_leaves_a_rate_limited_job_alone(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    # Given: tenant a's key allows one job at a time, one runs, the next would be dropped by it
    policy = {"key": "a-api", "concurrency": 1, "on_limit": "drop"}
    running, waiting = enqueue(*(tenant_body("a", rate_limit=policy) for _ in range(2)))
    assert ids_of(run(broker.fetch(["default"], count=1, tenant="a"))) == [running]
    # When: tenant b fetches from the same queue
    assert run(broker.fetch(["default"], count=5, tenant="b")) == []
    # Then: a's job was passed over before its limit was looked at: still available, not dropped
    assert run(broker.get(waiting))[b"state"] == b"available"
    run(broker.ack(running))
    assert ids_of(run(broker.fetch(["default"], count=1, tenant="a"))) == [waiting]
    run(broker.ack(waiting))


def test_a_tenant_that_cancelled_its_backlog_is_not_put_behind_another_tenants_backlog(
    broker: Broker, run: Run[Any],
) -> None:
    # Given: tenant b has a few jobs queued, tenant a a backlog of 2,000 behind them (tags
    # interleaved with b's), which a then cancels (a mistaken batch)
    enqueue_many(broker, run, "b", 3)
    a_backlog = enqueue_many(broker, run, "a", 2_000)
    for start in range(0, len(a_backlog), 500):
        run(broker.cancel_many(a_backlog[start:start + 500]))
    # When: a enqueues one job, then b a backlog of its own
    (a_job,) = enqueue_many(broker, run, "a", 1)
    enqueue_many(broker, run, "b", 2_000)
    # Then: a's job takes its turn among b's, not after 2,000 of them: a cancelled backlog earned
    # it no claims
    order = drain(broker, run, count=100)
    assert order.index(a_job) < 10, order.index(a_job)


def test_a_tenants_job_handed_back_through_no_doing_of_its_own_goes_first(broker: Broker, run: Run[Any]) -> None:
    # Given: tenant a's 1,000 jobs; a pool claims the first and hands it back unstarted (a
    # prefetch held too long, a drain): a release
    a_jobs = enqueue_many(broker, run, "a", 1_000)
    (got,) = run(broker.fetch(["default"], count=1, worker_id="w1"))
    assert got[b"id"].decode() == a_jobs[0]
    (out,) = run(broker.fail_many([Failure(job_id=a_jobs[0], verdict="release", worker_id="w1",
                                           claim=got[b"claim"].decode())], now_ms=timefmt.now_ms()))
    assert not isinstance(out, Exception)
    # Then: it is first again (its turn gave it nothing), not behind its 999 siblings
    assert drain(broker, run, count=100)[0] == a_jobs[0]


def test_a_tenants_new_job_stays_behind_its_own_older_ones_when_a_cancel_left_gaps(
    broker: Broker, run: Run[Any],
) -> None:
    # Given: b's job at the head; a's ten behind it, of which a cancels the first eight (gaps in
    # its tags, two of its jobs still waiting)
    enqueue_many(broker, run, "b", 1)
    a_jobs = enqueue_many(broker, run, "a", 10)
    run(broker.cancel_many(a_jobs[:8]))
    # When: a enqueues one more
    (newer,) = enqueue_many(broker, run, "a", 1)
    # Then: a's jobs keep their order: its two older ones first
    order = [i for i in drain(broker, run) if i in {*a_jobs, newer}]
    assert order == [*a_jobs[8:], newer]
