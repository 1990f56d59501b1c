"""The Python Client's enqueue path against a real Redis: what it stores for each job is what the
HTTP binding's validation builds from the same request body, however a batch shares its work;
the caller's drafts are left as they were; a reply lost after the script was sent is an unknown
outcome, not a retryable failure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker.records import NewJob, job_from_body
from runtime.broker.wire import OutcomeUnknown
from runtime.client import Client, Draft
from runtime.errors import Duplicate, EnqueueRejected, InvalidRequest
from tests.fixtures.tcp_proxy import FaultProxy
from tests.test_backend_outcome import ENQUEUE_FUNCTION

NOW_MS = 1_900_000_000_000


def _body(draft: Draft) -> bytes:
    body: dict[str, Any] = {"type": draft.type, "args": draft.args, "id": draft.id}
    if draft.meta:
        body["meta"] = draft.meta
    if draft.options:
        body["options"] = draft.options
    return msgspec.json.encode(body)


def _block(job: NewJob) -> tuple[list[str], dict[str, str]]:
    """A job's enqueue.lua block: its leading values, and its field pairs as a dict."""
    flat = msgspec.msgpack.decode(job.script_arg())
    return flat[:11], dict(zip(flat[11::2], flat[12::2], strict=True))


def _enqueued(redis_url: str, drafts: Sequence[Draft], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str | None], list[NewJob]]:
    """Enqueue through a Client at a fixed instant; the ids and the jobs it handed the broker."""
    monkeypatch.setattr(timefmt, "now_ms", lambda: NOW_MS)
    sent: list[NewJob] = []

    async def go() -> list[str | None]:
        async with Client(redis_url) as client:
            insert = client._broker.enqueue

            async def spy(jobs: Sequence[NewJob], **kwargs: Any) -> Any:
                sent.extend(jobs)
                return await insert(jobs, **kwargs)

            client._broker.enqueue = spy  # type: ignore[method-assign]
            return await client.enqueue_many(drafts)

    return asyncio.run(go()), sent


SHAPES: list[dict[str, Any]] = [
    {"options": {"queue": "q1"}},
    {"options": {"queue": "q1", "priority": 3, "tags": ["a", "b"], "timeout_ms": 5000}},
    {"meta": {"who": "me", "tenant_id": "acme"}, "options": {"queue": "q2"}},
    {"options": {"scheduled_at": "2030-01-01T00:00:00Z", "expires_at": "2031-01-01T00:00:00Z"}},
    {"options": {"delay_ms": 60_000, "retry": {"max_attempts": 7}}},
    {"options": {"unique": {"keys": ["args"], "on_conflict": "reject"}}},
    {"options": {"rate_limit": {"key": "smtp", "concurrency": 2}}},
    {"options": {"pending": True, "visibility_timeout_ms": 9000}},
]


def test_every_job_of_a_batch_is_built_as_the_http_binding_builds_its_body(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: a batch with several jobs of each shape (type, meta, options), different args,
    # some of another type, the shapes interleaved
    drafts = [Draft(type=f"shape.t{i % 2}", args=[i, {"n": i}], **SHAPES[i % len(SHAPES)])
              for i in range(4 * len(SHAPES))]
    # When
    ids, sent = _enqueued(redis_url, drafts, monkeypatch)
    # Then: each job is exactly what the binding's validation makes of the same request body
    assert len(ids) == len(drafts) == len(sent) and None not in ids
    for draft, job in zip(drafts, sent, strict=True):
        alone = job_from_body(_body(Draft(type=draft.type, args=draft.args, meta=draft.meta,
                                          options=draft.options, id=job.id)), now_ms=NOW_MS)
        alone.client_id = False  # the Client made the id: it cannot collide
        assert msgspec.structs.replace(job, shared=None) == alone, draft
        # And: what enqueue.lua gets is the same block, whatever order its field pairs come in
        assert _block(job) == _block(alone), draft
    # And: the ids are the ones stored, one hash each
    client = redis.Redis.from_url(redis_url)
    assert all(client.exists(f"{{ojs}}:job:{job_id}") for job_id in ids)


def test_a_validation_hook_sees_each_jobs_own_args(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: two jobs of one shape asking to be validated, the second with no args
    drafts = [Draft(type="checked.job", args=[1], meta={"ojs_validate": True}),
              Draft(type="checked.job", args=[], meta={"ojs_validate": True})]
    # When / Then: the batch is refused as a whole, nothing is stored
    with pytest.raises(EnqueueRejected):
        _enqueued(redis_url, drafts, monkeypatch)
    assert redis.Redis.from_url(redis_url).keys("{ojs}:job:*") == []


def test_unique_jobs_of_one_shape_lock_their_own_args(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    unique = {"unique": {"keys": ["args"], "on_conflict": "reject"}}
    # Given: two unique jobs, same type and policy, different args: two jobs
    ids, sent = _enqueued(redis_url, [Draft(type="u.job", args=[1], options=unique),
                                      Draft(type="u.job", args=[2], options=unique)], monkeypatch)
    assert len(set(ids)) == 2 and sent[0].unique != sent[1].unique
    # When / Then: the same args again are a duplicate
    with pytest.raises(Duplicate):
        _enqueued(redis_url, [Draft(type="u.job", args=[2], options=unique)], monkeypatch)


def test_the_callers_drafts_are_left_as_they_were(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    drafts = [Draft(type="kept.job", args=[1], meta={"m": 1}, options={"queue": "k"}) for _ in range(3)]
    before = msgspec.json.encode(drafts)
    ids, _sent = _enqueued(redis_url, drafts, monkeypatch)
    assert msgspec.json.encode(drafts) == before and all(d.id is None for d in drafts)
    assert len(set(ids)) == 3


def test_a_callers_id_is_checked_like_a_request_body(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (job_id,), _ = _enqueued(redis_url, [Draft(type="own.id", id="0190b5a6-0000-7000-8000-000000000001")], monkeypatch)
    with pytest.raises(Duplicate):
        _enqueued(redis_url, [Draft(type="own.id", id=job_id)], monkeypatch)
    with pytest.raises(InvalidRequest):
        _enqueued(redis_url, [Draft(type="own.id", id="not an id")], monkeypatch)
    with pytest.raises(InvalidRequest):
        _enqueued(redis_url, [Draft(type="bad type!", args=[1])], monkeypatch)


def test_a_reply_lost_after_the_enqueue_was_sent_is_an_unknown_outcome(
    proxy: FaultProxy, redis_client: redis.Redis,
) -> None:
    async def go() -> None:
        async with Client(proxy.url()) as client:
            await client.enqueue("lost.reply", [0])  # the library is loaded, the registry read
            proxy.arm(ENQUEUE_FUNCTION)
            with pytest.raises(OutcomeUnknown):
                await client.enqueue("lost.reply", [1])

    asyncio.run(go())
    assert proxy.dropped.is_set()


def test_jobs_enqueued_one_at_a_time_in_one_millisecond_keep_their_own_args(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timefmt, "now_ms", lambda: NOW_MS)

    async def go() -> list[str | None]:
        async with Client(redis_url) as client:
            return [await client.enqueue("one.at.a.time", [i], queue="single") for i in range(3)]

    ids = asyncio.run(go())
    client = redis.Redis.from_url(redis_url)
    stored = [client.hmget(f"{{ojs}}:job:{job_id}", ["id", "args", "created_at"]) for job_id in ids]
    assert stored == [[str(job_id).encode(), f"[{i}]".encode(), str(NOW_MS).encode()] for i, job_id in enumerate(ids)]
