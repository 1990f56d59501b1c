"""The pool's direct hash -> Job path (`runtime.claimed_job`) against the general one (render the
envelope, encode it, decode it as `Job`): the same Job for every hash a fetch returns, and for
optional fields stored as JSON null; an error from both for every `Job` field the general path
rejects; and an error, where the general path spliced it in, for a fragment with text after it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import Failure
from runtime.broker.render import encode_job
from runtime.claimed_job import job_of_hash
from runtime.context import Job
from runtime.envelope import ErrorInfo
from tests.broker.conftest import body, new_job

_general = msgspec.json.Decoder(Job)
DECODE_ERRORS = (msgspec.MsgspecError, ValueError)


def general(h: dict[bytes, bytes]) -> Job:
    return _general.decode(encode_job(h))


def claim_one(broker: Any, run: Any, *, now_ms: int | None = None) -> dict[bytes, bytes]:
    (h,) = run(broker.fetch(["default"], count=1, worker_id="w1", now_ms=now_ms))
    return h


def test_a_plain_claimed_job_reads_the_same(broker: Any, run: Any, enqueue: Any) -> None:
    enqueue(body())
    h = claim_one(broker, run)
    assert job_of_hash(h) == general(h)
    assert job_of_hash(h).started_at is not None


def test_every_option_reads_the_same(broker: Any, run: Any) -> None:
    now = timefmt.now_ms()
    job = new_job({
        "type": "test.rich", "args": [{"a": [1, 2.5, None]}, "x", True], "meta": {"m": {"n": 1}},
        "options": {"priority": 7, "timeout_ms": 5000, "visibility_timeout_ms": 9000, "tags": ["t1", "t2"],
                    "scheduled_at": timefmt.format_ms(now - 1000), "retry": {"max_attempts": 5}},
    }, now_ms=now)
    run(broker.enqueue([job], now_ms=now))
    h = claim_one(broker, run, now_ms=now + 10)
    direct = job_of_hash(h)
    assert direct == general(h)
    assert (direct.priority, direct.tags, direct.timeout_ms, direct.max_attempts) == (7, ["t1", "t2"], 5000, 5)


def test_a_retried_job_with_its_errors_reads_the_same(broker: Any, run: Any, enqueue: Any) -> None:
    (job_id,) = enqueue(body(retry={"max_attempts": 4, "jitter": False, "initial_interval": "PT0.001S"}))
    now = timefmt.now_ms()
    for attempt in (1, 2):
        h = claim_one(broker, run, now_ms=now + attempt * 10)
        error = failures.error_record(ErrorInfo(code="handler_error", type="Boom", message=f"try {attempt}"), now)
        run(broker.fail_many([Failure(job_id=job_id, verdict="retry", error=error, worker_id="w1",
                                      attempt=attempt, claim=h[b"claim"].decode(), delay_ms=0)], now_ms=now))
    h = claim_one(broker, run, now_ms=now + 1000)
    direct = job_of_hash(h)
    assert direct == general(h)
    assert direct.attempt == 3 and len(direct.errors) == 2 and direct.error is not None


def test_workflow_fields_and_unknown_fields_read_the_same(broker: Any, run: Any, enqueue: Any) -> None:
    enqueue({"type": "test.job", "args": [], "x_custom": {"kept": True}})
    h = claim_one(broker, run)
    assert b"extra" in h
    assert job_of_hash(h) == general(h)
    del h[b"extra"]
    h[b"workflow_id"], h[b"parent_results"] = b"wf-1", b'[{"a":1},null]'
    assert job_of_hash(h) == general(h)
    assert job_of_hash(h).parent_results == [{"a": 1}, None]


BROKEN: list[tuple[str, dict[bytes, bytes | None]]] = [
    ("no id", {b"id": None}),
    ("no type", {b"type": None}),
    ("no queue", {b"queue": None}),
    ("no state", {b"state": None}),
    ("args not a list", {b"args": b'{"a":1}'}),
    ("args not JSON", {b"args": b"[1,"}),
    ("meta not an object", {b"meta": b"[1]"}),
    ("priority not a number", {b"priority": b"high"}),
    ("attempt not a number", {b"attempt": b"1.5"}),
    ("timeout not a number", {b"timeout_ms": b"soon"}),
    ("retry not an object", {b"retry": b"1"}),
    ("tags not strings", {b"tags": b"[1]"}),
    ("error not an object", {b"error": b"[]"}),
    ("an error entry not an object", {b"nerr": b"1", b"e1": b'"boom"'}),
    ("parent results not a list", {b"parent_results": b"{}"}),
    ("a time not a number", {b"created_at": b"yesterday"}),
    ("a type not UTF-8", {b"type": b"\xff\xfe"}),
]


@pytest.mark.parametrize("change", [c for _, c in BROKEN], ids=[name for name, _ in BROKEN])
def test_a_hash_the_general_path_rejects_is_rejected(
    broker: Any, run: Any, enqueue: Any, change: dict[bytes, bytes | None],
) -> None:
    enqueue(body())
    h = claim_one(broker, run)
    for field, value in change.items():
        if value is None:
            h.pop(field, None)
        else:
            h[field] = value
    with pytest.raises(DECODE_ERRORS):
        general(h)
    with pytest.raises(DECODE_ERRORS):
        job_of_hash(h)


@pytest.mark.parametrize("field", [b"retry", b"tags", b"error", b"parent_results"])
def test_an_optional_field_stored_as_json_null_reads_as_none_on_both_paths(
    broker: Any, run: Any, enqueue: Any, field: bytes,
) -> None:
    enqueue(body())
    h = claim_one(broker, run)
    h[field] = b"null"
    assert job_of_hash(h) == general(h)
    assert getattr(job_of_hash(h), field.decode()) is None


def test_a_fragment_with_text_after_it_is_rejected_not_spliced_into_the_job(
    broker: Any, run: Any, enqueue: Any,
) -> None:
    enqueue(body(job_type="test.job"))
    h = claim_one(broker, run)
    h[b"args"] = b'[1],"type":"other"'
    assert general(h).type == "other"  # the general path's splice: why the pool does not use it
    with pytest.raises(DECODE_ERRORS):
        job_of_hash(h)


@pytest.mark.parametrize("version", [2, "2.0"])
def test_a_versioned_claimed_job_reads_its_version_as_sent(broker: Any, run: Any, enqueue: Any, version: Any) -> None:
    enqueue({**body(), "version": version})
    h = claim_one(broker, run)
    assert job_of_hash(h) == general(h)
    assert job_of_hash(h).version == version
