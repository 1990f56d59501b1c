"""The job hash layout: a common job's hash is small (Redis' compact listpack encoding), holds no
part of the default retry policy (neither its display nor a scalar at its default: the previous
version's nack.lua applies the defaults too, see test_job_layout_compat.py), and reads back, with
every default filled in, exactly as a hash of the earlier layouts (which held the whole policy in
every job) does; such old hashes keep working."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.broker.migrations import RetryLayoutMigration
from runtime.broker.records import resolve_retry
from runtime.broker.render import render_job
from runtime.claimed_job import job_of_hash
from runtime.envelope import ErrorInfo
from tests.broker.conftest import Run, body, read_job

Enqueue = Callable[..., list[str]]
DAY_MS = 86_400_000
BOOM = ErrorInfo(message="boom", type="BoomError")
LISTPACK_VALUE_MAX = 64  # Redis' default hash-max-listpack-value
RETRY_SCALARS = {"max_attempts", "r_initial_ms", "r_coef", "r_max_ms", "r_jitter", "r_strategy", "on_exhaustion"}
RETRY_FIELDS = {"retry", *RETRY_SCALARS}
# The full default policy, as every job hash held it before only differences were stored.
DEFAULT_POLICY = (b'{"max_attempts":3,"initial_interval":"PT1S","backoff_coefficient":2.0,"max_interval":"PT300S",'
                  b'"jitter":true,"non_retryable_errors":[],"on_exhaustion":"discard","backoff_strategy":"exponential"}')


def old_layout(policy: dict[str, Any] | None) -> dict[str, str]:
    """The retry fields the earlier layout wrote for this policy (the whole of it, always)."""
    p = resolve_retry(msgspec.Raw(msgspec.json.encode(policy)) if policy else msgspec.Raw())
    return {"max_attempts": str(p.max_attempts), "retry": p.display_json, "r_initial_ms": str(p.initial_ms),
            "r_coef": repr(p.coefficient), "r_max_ms": str(p.max_ms), "r_jitter": "1" if p.jitter else "0",
            "r_strategy": p.strategy, "on_exhaustion": p.on_exhaustion}


def envelope(broker: Broker, run: Run[Any], job_id: str) -> dict[str, Any]:
    return msgspec.json.decode(msgspec.json.encode(render_job(run(broker.get(job_id)))))


def test_common_job_hash_is_a_listpack_without_a_policy(
    enqueue: Enqueue, redis_client: redis.Redis, keys: Keys,
) -> None:
    (job_id,) = enqueue(body())
    stored = read_job(redis_client, keys, job_id)
    assert RETRY_FIELDS & stored.keys() == set(), stored
    assert max(len(v.encode()) for v in stored.values()) <= LISTPACK_VALUE_MAX
    assert redis_client.object("encoding", keys.job(job_id)) == b"listpack"


def test_job_without_policy_shows_the_whole_default_policy(enqueue: Enqueue, broker: Broker, run: Run[Any]) -> None:
    (job_id,) = enqueue(body())
    h = run(broker.get(job_id))
    env = envelope(broker, run, job_id)
    assert env["max_attempts"] == 3
    assert msgspec.json.encode(env["retry"]) == DEFAULT_POLICY
    job = job_of_hash(h)
    assert (job.max_attempts, job.retry) == (3, msgspec.json.decode(DEFAULT_POLICY))


def test_partial_policy_stores_only_the_part_that_differs_and_shows_the_whole(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    policy = {"max_attempts": 5, "jitter": False, "on_exhaustion": "dead_letter"}
    (job_id,) = enqueue(body(retry=policy))
    stored = read_job(redis_client, keys, job_id)
    assert {k: v for k, v in stored.items() if k in RETRY_SCALARS} == {
        "max_attempts": "5", "r_jitter": "0", "on_exhaustion": "dead_letter"}
    assert msgspec.json.decode(stored["retry"]) == {"max_attempts": 5, "jitter": False, "on_exhaustion": "dead_letter"}
    assert redis_client.object("encoding", keys.job(job_id)) == b"listpack"
    env = envelope(broker, run, job_id)
    assert env["retry"] == msgspec.json.decode(resolve_retry(msgspec.Raw(msgspec.json.encode(policy))).display_json)
    assert env["max_attempts"] == 5


@pytest.mark.parametrize("policy", [
    None,
    {"max_attempts": 2, "initial_interval": "PT5S", "backoff_strategy": "constant", "jitter": False,
     "on_exhaustion": "dead_letter", "non_retryable_errors": ["Fatal*"]},
], ids=["default", "custom"])
def test_old_layout_hash_reads_and_retries_as_before(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    policy: dict[str, Any] | None,
) -> None:
    # Given: two jobs of one policy, one of them stored as the earlier layout stored it
    new_id, old_id = enqueue(*(body(retry=policy) if policy else body() for _ in range(2)))
    redis_client.hset(keys.job(old_id), mapping=old_layout(policy))
    # Then: both read the same (the id and the args apart)
    old_env, new_env = envelope(broker, run, old_id), envelope(broker, run, new_id)
    assert {**old_env, "id": new_id} == new_env
    assert job_of_hash(run(broker.get(old_id))).retry == job_of_hash(run(broker.get(new_id))).retry
    # And both fail the same way: the old hash's stored policy decides its retry
    run(broker.fetch(["default"], count=2, worker_id="w1"))
    for job_id in (new_id, old_id):
        out = run(broker.nack(job_id, BOOM, worker_id="w1"))
        assert (out.state, out.attempt, out.max_attempts) == ("retryable", 1, policy["max_attempts"] if policy else 3)
        if policy:
            assert out.retry_delay_ms == 5000
        else:
            assert out.retry_delay_ms is not None and 500 <= out.retry_delay_ms <= 1500  # 1 s, jittered
    if policy:  # non_retryable_errors and on_exhaustion are read from the stored policy
        run(broker.fetch(["default"], count=2, worker_id="w1", now_ms=timefmt.now_ms() + DAY_MS))
        for job_id in (new_id, old_id):
            out = run(broker.nack(job_id, ErrorInfo(message="m", type="FatalError"), worker_id="w1"))
            assert out.state == "discarded" and out.outcome == "dead_lettered"
            assert redis_client.zscore(keys.dlq, job_id) is not None


def test_default_policy_is_applied_where_read(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # A job without a stored policy: retried with the default backoff, and discarded (not
    # dead-lettered) once its 3 attempts are spent.
    (job_id,) = enqueue(body())
    states = []
    for n in range(3):
        run(broker.fetch(["default"], worker_id="w1", now_ms=timefmt.now_ms() + (n + 1) * DAY_MS))
        out = run(broker.nack(job_id, BOOM, worker_id="w1"))
        states.append((out.state, out.attempt, out.max_attempts))
        if out.state == "retryable":
            assert out.retry_delay_ms is not None and 500 * 2 ** n <= out.retry_delay_ms <= 1500 * 2 ** n
    assert states == [("retryable", 1, 3), ("retryable", 2, 3), ("discarded", 3, 3)]
    assert redis_client.zscore(keys.dlq, job_id) is None


def test_retry_layout_migration_rewrites_old_hashes_to_the_small_layout(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    # Given: jobs as the earlier layout stored them (a default policy, a custom one), one of them
    # with a TTL, and a job of the current layout
    custom = {"max_attempts": 5, "initial_interval": "PT2S", "jitter": False}
    old_default, old_custom, old_expiring, current = enqueue(body(), body(retry=custom), body(), body())
    for job_id, policy in ((old_default, None), (old_custom, custom), (old_expiring, None)):
        redis_client.hset(keys.job(job_id), mapping=old_layout(policy))
    redis_client.pexpire(keys.job(old_expiring), 3_600_000)
    assert redis_client.object("encoding", keys.job(old_default)) == b"hashtable"
    before = {job_id: envelope(broker, run, job_id) for job_id in (old_default, old_custom, old_expiring, current)}
    # When
    migration = RetryLayoutMigration(broker)
    assert run(migration.run()) == 3  # the current job has nothing to give back
    # Then: the default jobs hold no retry field and are listpacks again; the custom one keeps
    # its display as it was stored and its scalars that are not the default's; every job reads
    # as before, and the TTL is kept
    for job_id in (old_default, old_expiring):
        assert RETRY_FIELDS & read_job(redis_client, keys, job_id).keys() == set()
        assert redis_client.object("encoding", keys.job(job_id)) == b"listpack"
    kept = {k: v for k, v in read_job(redis_client, keys, old_custom).items() if k in RETRY_FIELDS}
    assert kept == {"retry": old_layout(custom)["retry"], "max_attempts": "5", "r_initial_ms": "2000", "r_jitter": "0"}
    assert {job_id: envelope(broker, run, job_id) for job_id in before} == before
    assert 0 < redis_client.pttl(keys.job(old_expiring)) <= 3_600_000
    assert run(migration.run()) == 0  # done once: not run again


def test_a_migration_resumed_from_a_cursor_of_another_keyspace_still_reaches_every_job(
    enqueue: Enqueue, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
) -> None:
    """A recorded SCAN cursor means a place only in the keyspace of the server that gave it: after
    a Redis restart, a failover or a reshard it may point past keys never visited."""
    # Given: old-layout jobs, and a cursor recorded by an interrupted run on another server (here:
    # one near the end of a scan of a table this size)
    ids = enqueue(*(body() for _ in range(300)))
    for job_id in ids:
        redis_client.hset(keys.job(job_id), mapping=old_layout(None))
    redis_client.hset(keys.migrations, f"{RetryLayoutMigration.NAME}:cursor", str(2**9 - 1))
    # When
    assert run(RetryLayoutMigration(broker).run()) == len(ids)
    # Then: every job is in the small layout
    assert {redis_client.object("encoding", keys.job(job_id)) for job_id in ids} == {b"listpack"}
