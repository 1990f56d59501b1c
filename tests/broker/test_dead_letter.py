"""dlq_retry.lua and dlq_delete.lua through Admin: dead-lettered jobs back to work, or gone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.admin import Admin
from runtime.broker.core import Broker, Failure
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys
from runtime.broker.render import error_history
from runtime.envelope import ErrorInfo
from runtime.errors import NotFound
from runtime.ids import uuid7
from tests.broker.conftest import Run, body, new_job, read_job

Enqueue = Callable[..., list[str]]


@pytest.fixture
def dead_lettered(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> Callable[..., str]:
    """``dead_lettered(**options)``: a job in queue "dl" that failed once with DEAD_LETTER."""

    def make(**options: Any) -> str:
        (job_id,) = enqueue(body(queue="dl", **options))
        run(broker.fetch(["dl"], worker_id="w1"))
        out = run(broker.nack(job_id, ErrorInfo(message="poison", code="DEAD_LETTER")))
        assert out.state == "discarded"
        return job_id

    return make


def test_dead_letter_retry_makes_job_available_with_fresh_budget(
    dead_lettered: Callable[..., str], admin: Admin, broker: Broker, run: Run[Any],
    redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given
    job_id = dead_lettered()
    # When
    run(admin.dead_letter_retry(job_id))
    # Then: available, attempt 0, failure fields cleared, history kept, out of the DLQ
    job = read_job(redis_client, keys, job_id)
    assert (job["state"], job["attempt"]) == ("available", "0")
    for gone in ("error", "completed_at", "discarded_at", "retry_delay_ms", "next_attempt_at",
                 "dead_lettered", "worker_id", "started_at"):
        assert gone not in job
    assert len(error_history(redis_client.hgetall(keys.job(job_id)))) == 1
    assert redis_client.zscore(keys.dlq, job_id) is None
    assert redis_client.zscore(keys.available("dl"), job_id) is not None
    assert redis_client.hget(keys.counts("dl"), "discarded") == b"0"
    # And it runs again from attempt 1
    (h,) = run(broker.fetch(["dl"]))
    assert (h[b"id"], h[b"attempt"]) == (job_id.encode(), b"1")


def test_dead_letter_retry_rejects_job_not_dead_lettered(
    enqueue: Enqueue, admin: Admin, broker: Broker, run: Run[Any]
) -> None:
    # Given: a job discarded without dead-lettering, and an available one
    plain, idle = enqueue(body(), body())
    run(broker.fetch(["default"]))
    run(broker.nack(plain, ErrorInfo(message="m", code="DISCARD")))
    # When / Then
    for job_id in (plain, idle, uuid7()):
        with pytest.raises(NotFound):
            run(admin.dead_letter_retry(job_id))


def test_dead_letter_delete_removes_job_and_its_count(
    dead_lettered: Callable[..., str], admin: Admin, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given
    job_id, kept = dead_lettered(), dead_lettered()
    # When
    run(admin.dead_letter_delete(job_id))
    # Then
    assert not redis_client.exists(keys.job(job_id))
    assert [m.decode() for m in redis_client.zrange(keys.dlq, 0, -1)] == [kept]
    assert redis_client.hget(keys.counts("dl"), "discarded") == b"1"
    with pytest.raises(NotFound):
        run(admin.dead_letter_delete(job_id))


def test_dead_letter_page_lists_oldest_first_and_filters_by_queue(
    dead_lettered: Callable[..., str], enqueue: Enqueue, admin: Admin, broker: Broker, run: Run[Any]
) -> None:
    first, second = dead_lettered(), dead_lettered()
    (elsewhere,) = enqueue(body(queue="other", retry={"on_exhaustion": "dead_letter", "max_attempts": 1}))
    run(broker.fetch(["other"]))
    run(broker.nack(elsewhere, ErrorInfo(message="m")))
    total, page = run(admin.dead_letter_page(queue=None, limit=10, offset=0))
    assert total == 3
    assert {h[b"id"].decode() for h in page} == {first, second, elsewhere}
    total, page = run(admin.dead_letter_page(queue="dl", limit=1, offset=1))
    assert total == 2 and [h[b"id"].decode() for h in page] == [second]


def test_dead_letter_retry_of_expiring_job_keeps_store_consistent(
    dead_lettered: Callable[..., str], admin: Admin, broker: Broker, run: Run[Any], allow_inconsistency: None
) -> None:
    job_id = dead_lettered(expires_at="+PT1H")
    run(admin.dead_letter_retry(job_id))
    assert run(check_integrity(broker.redis, broker.keys)) == []


def _dead_letter_many(broker: Broker, run: Run[Any], queue: str, count: int) -> list[str]:
    """`count` jobs of `queue` dead-lettered in three script calls (enqueue, fetch, fail)."""
    bodies = [body(queue=queue, retry={"on_exhaustion": "dead_letter", "max_attempts": 1}) for _ in range(count)]
    now = timefmt.now_ms()
    done = run(broker.enqueue([new_job(b, now_ms=now) for b in bodies], now_ms=now))
    claimed = run(broker.fetch([queue], count=count))
    assert len(claimed) == count
    results = run(broker.fail_many([Failure(job_id=d.job_id, verdict="dead_letter") for d in done], now_ms=now))
    assert all(r.state == "discarded" for r in results if not isinstance(r, Exception))
    return [d.job_id for d in done]


class _JobReads:
    """The commands that read a job hash in this test's database while it is open (MONITOR,
    which sees every client of the server: other tests' processes on other databases are told
    apart by the database, where a server-wide counter would count them too)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.db = int(client.connection_pool.connection_kwargs.get("db", 0))
        self.monitor = client.monitor()
        self.monitor.__enter__()

    def count(self) -> int:
        """Stop watching; the reads seen (up to a marker this call sends, so none is missed)."""
        marker = f"job-reads-end-{id(self)}"
        self.client.echo(marker)
        reads = 0
        try:
            for event in self.monitor.listen():
                command = event["command"]
                if event.get("db") != self.db:
                    continue
                if marker in command:
                    return reads
                name, _, rest = command.partition(" ")
                if name.upper() in ("HGETALL", "HMGET", "HGET") and ":job:" in rest.split(" ", 1)[0]:
                    reads += 1
        finally:
            self.monitor.__exit__(None, None, None)
        raise AssertionError("the monitor ended before its marker")


def test_dead_letter_page_of_one_queue_reads_only_that_queue_entries(
    broker: Broker, admin: Admin, run: Run[Any], redis_client: redis.Redis,
) -> None:
    # Given: a big dead letter queue of one queue, and three entries of another
    _dead_letter_many(broker, run, "bulk", 2_000)
    few = _dead_letter_many(broker, run, "few", 3)
    # When: the small queue is listed, a page of two
    watch = _JobReads(redis_client)
    total, page = run(admin.dead_letter_page(queue="few", limit=2, offset=0))
    reads = watch.count()
    # Then: its own entries, oldest first, and only as many job hashes read as the page holds
    assert total == 3
    assert [h[b"id"].decode() for h in page] == few[:2]
    assert reads <= 2, f"{reads} job hash reads for a page of 2"
    # And the next page holds the rest
    total, page = run(admin.dead_letter_page(queue="few", limit=2, offset=2))
    assert (total, [h[b"id"].decode() for h in page]) == (3, few[2:])


def test_dead_letter_queue_index_follows_retry_and_delete(
    dead_lettered: Callable[..., str], admin: Admin, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    retried, deleted, kept = dead_lettered(), dead_lettered(), dead_lettered()
    assert redis_client.zrange(keys.queue_dlq("dl"), 0, -1) == [retried.encode(), deleted.encode(), kept.encode()]
    run(admin.dead_letter_retry(retried))
    run(admin.dead_letter_delete(deleted))
    assert redis_client.zrange(keys.queue_dlq("dl"), 0, -1) == [kept.encode()]
    total, page = run(admin.dead_letter_page(queue="dl", limit=10, offset=0))
    assert (total, [h[b"id"].decode() for h in page]) == (1, [kept])


@pytest.mark.parametrize(("corrupt", "expected"), [
    (lambda c, k, job_id: c.zrem(k.queue_dlq("dl"), job_id), "dead-lettered but not in {ojs-test}:queue:dl:dlq"),
    (lambda c, k, job_id: c.zadd(k.queue_dlq("elsewhere"), {job_id: 1}), "also in {ojs-test}:queue:elsewhere:dlq"),
])
def test_integrity_checks_the_dead_letter_queue_index(
    dead_lettered: Callable[..., str], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    allow_inconsistency: None, corrupt: Callable[[redis.Redis, Keys, str], None], expected: str,
) -> None:
    job_id = dead_lettered()
    assert run(check_integrity(broker.redis, keys)) == []
    corrupt(redis_client, keys, job_id)
    problems = run(check_integrity(broker.redis, keys))
    assert any(expected in p for p in problems), problems
