"""fetch.lua's lean reply (the pool's) against its full one: for every kind of job the pool can
claim, what the pool reads of the lean reply equals what it would read of the whole hash. The
pool reads the `Job` (`job_of_hash`) and the fields named in POOL_READS (runtime/worker.py,
runtime/metrics.py), so a field missing from the lean list fails here."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.claim_reply import LEAN_FIELDS
from runtime.broker.core import Broker, Failure
from runtime.broker.keys import Keys
from runtime.broker.scripts import SOURCES
from runtime.broker.workflows import Workflows
from runtime.claimed_job import job_of_hash
from runtime.envelope import ErrorInfo
from tests.broker.conftest import Run, body, new_job
from tests.broker.test_nested_workflows import chain, msgspec_request, step

# The hash fields the pool reads besides the `Job`: the claim's token and attempt (settling,
# hand-back), the lease, the suspect mark, the checkpoint, workflow tracing, the wait metric.
POOL_READS = (b"id", b"type", b"claim", b"attempt", b"visibility_timeout_ms", b"suspect", b"checkpoint",
              b"wf_index", b"step_traces", b"enqueued_at", b"started_at")


def claim_both(broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, queue: str = "default",
               **fetch: Any) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """One job claimed with the lean reply, and its whole hash read right after the claim."""
    (lean,) = run(broker.fetch([queue], count=1, worker_id="w1", lean=True, **fetch))
    full: dict[bytes, bytes] = redis_client.hgetall(keys.job(lean[b"id"].decode()))
    return lean, full


def assert_reads_the_same(lean: dict[bytes, bytes], full: dict[bytes, bytes]) -> None:
    assert job_of_hash(lean) == job_of_hash(full)
    assert {name: lean.get(name) for name in POOL_READS} == {name: full.get(name) for name in POOL_READS}
    assert all(full.get(name) == value for name, value in lean.items())  # nothing but the hash's own values


def test_a_job_with_every_option_reads_the_same(broker: Any, run: Any, redis_client: Any, keys: Any) -> None:
    now = timefmt.now_ms()
    job = new_job({
        "type": "test.rich", "args": [{"a": [1, 2.5, None]}, "x"], "meta": {"m": {"n": 1}, "traceparent": "t"},
        "options": {"priority": 7, "timeout_ms": 5000, "visibility_timeout_ms": 9000, "tags": ["t1", "t2"],
                    "scheduled_at": timefmt.format_ms(now - 1000),
                    "retry": {"max_attempts": 5, "initial_interval": "PT2S"},
                    "unique": {"keys": ["type", "args"]}, "expires_at": timefmt.format_ms(now + 3_600_000),
                    "rate_limit": {"key": "api", "concurrency": 3}},
    }, now_ms=now)
    run(broker.enqueue([job], now_ms=now))
    lean, full = claim_both(broker, run, redis_client, keys, now_ms=now + 10)
    assert b"rl_key" in full and b"unique_key" in full and b"timeout_ms" in full  # the options took
    assert len(lean) < len(full)  # the lean reply, not the whole hash
    assert_reads_the_same(lean, full)


def test_a_plain_job_reads_the_same(broker: Any, run: Any, redis_client: Any, keys: Any, enqueue: Any) -> None:
    enqueue(body())
    lean, full = claim_both(broker, run, redis_client, keys)
    assert_reads_the_same(lean, full)


def test_a_workflow_step_with_its_parents_results_reads_the_same(
    broker: Any, run: Any, redis_client: Any, keys: Any,
) -> None:
    run(Workflows(broker).create(msgspec_request(chain(step("a"), step("b")))))
    (first,) = run(broker.fetch(["default"], count=1, worker_id="w1"))
    run(broker.ack(first[b"id"].decode(), json.dumps({"a": 1}).encode()))
    run(broker.advance_workflows())
    lean, full = claim_both(broker, run, redis_client, keys)
    assert b"workflow_id" in full and b"parent_results" in full
    assert_reads_the_same(lean, full)


def test_a_retried_job_with_a_checkpoint_and_errors_reads_the_same(
    broker: Any, run: Any, redis_client: Any, keys: Any, enqueue: Any,
) -> None:
    (job_id,) = enqueue(body(retry={"max_attempts": 4, "jitter": False, "initial_interval": "PT0.001S"},
                             meta={"k": "v"}))
    now = timefmt.now_ms()
    h = run(broker.fetch(["default"], count=1, worker_id="w1", now_ms=now))[0]
    run(broker.progress(job_id, value=0.5, checkpoint=b'{"at":3}', claim=h[b"claim"].decode()))
    error = failures.error_record(ErrorInfo(code="handler_error", type="Boom", message="try 1"), now)
    run(broker.fail_many([Failure(job_id=job_id, verdict="retry", error=error, worker_id="w1", attempt=1,
                                  claim=h[b"claim"].decode(), delay_ms=0)], now_ms=now))
    lean, full = claim_both(broker, run, redis_client, keys, now_ms=now + 1000)
    assert b"checkpoint" in full and b"nerr" in full
    assert_reads_the_same(lean, full)
    assert job_of_hash(lean).attempt == 2 and len(job_of_hash(lean).errors) == 1


def test_a_job_with_unknown_fields_reads_the_same(broker: Any, run: Any, redis_client: Any, keys: Any,
                                                  enqueue: Any) -> None:
    enqueue({"type": "test.job", "args": [], "x_custom": {"kept": True}})
    lean, full = claim_both(broker, run, redis_client, keys)
    assert b"extra" in full
    assert_reads_the_same(lean, full)


def test_a_tenants_job_reads_the_same(broker: Any, run: Any, redis_client: Any, keys: Any, enqueue: Any) -> None:
    enqueue({"type": "t.job", "args": [], "meta": {"tenant_id": "acme"}})
    lean, full = claim_both(broker, run, redis_client, keys, tenant="acme")
    assert b"tenant" in full
    assert_reads_the_same(lean, full)


def test_the_lean_field_lists_agree_on_both_sides() -> None:
    # The reply is positional: a field added on one side only would shift every value after it.
    source = SOURCES["fetch"]
    block = source[source.index("local LEAN_FIELDS = {"):]
    block = block[:block.index("}")]
    assert tuple(name.encode() for name in re.findall(r'"([a-z_]+)"', block)) == LEAN_FIELDS
