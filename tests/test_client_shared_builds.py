"""The Client's shared builds: a job that takes another's build must be refused where the
HTTP binding (and the Client's own first job of a shape) refuses its request body."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.client import Client, Draft
from runtime.errors import InvalidPayload, InvalidRequest
from tests.test_client_enqueue import NOW_MS, _enqueued

REFUSED = (InvalidRequest, InvalidPayload)  # the binding's 400s for a body


def test_the_first_job_of_a_shape_with_non_json_args_is_refused(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: built alone (its body decoded), non-JSON args are a 400.
    with pytest.raises(REFUSED):
        _enqueued(redis_url, [Draft(type="raw.args", args=[msgspec.Raw(b"{not json")])], monkeypatch)


def test_non_json_args_behind_a_shared_build_are_refused_in_a_batch(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: two jobs of one shape, the second's args not JSON (a Raw the encoder copies as it is)
    drafts = [Draft(type="raw.args", args=[1]), Draft(type="raw.args", args=[msgspec.Raw(b"{not json")])]
    # When / Then: refused as the HTTP binding refuses the second body, and nothing is stored
    with pytest.raises(REFUSED):
        _enqueued(redis_url, drafts, monkeypatch)
    assert redis.Redis.from_url(redis_url).keys("{ojs}:job:*") == []


def test_non_json_args_behind_a_shared_build_are_refused_one_at_a_time(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timefmt, "now_ms", lambda: NOW_MS)
    stored: list[str] = []

    async def go() -> None:
        async with Client(redis_url) as client:
            await client.enqueue("raw.args", [1])  # the shape's build, kept for this millisecond
            try:
                job_id = await client.enqueue("raw.args", [msgspec.Raw(b"{not json")])
            except REFUSED:
                return
            stored.append(job_id or "")

    asyncio.run(go())
    if stored:
        args = redis.Redis.from_url(redis_url).hget(f"{{ojs}}:job:{stored[0]}", "args")
        pytest.fail(f"enqueued as job {stored[0]} with args {args!r}, which no reader can decode")


def test_each_job_keeps_what_the_middleware_made_of_it(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: a middleware stamping each job's metadata with its place in the call (in the dict the
    # options carry: a draft's copy is shallow), and drafts made from one options value
    monkeypatch.setattr(timefmt, "now_ms", lambda: NOW_MS)
    seen: list[int] = []

    async def stamp(draft: Draft, call_next):  # type: ignore[no-untyped-def]
        draft.options["metadata"]["seq"] = len(seen)
        seen.append(len(seen))
        return await call_next()

    common = {"queue": "stamped", "metadata": {"origin": "batch"}}
    drafts = [Draft(type="stamped.job", args=[i], options=common) for i in range(3)]

    async def go() -> list[str | None]:
        async with Client(redis_url, middleware=[stamp]) as client:
            return await client.enqueue_many(drafts)

    ids = asyncio.run(go())
    # Then: each job holds the stamp its own middleware call gave it (as when each draft's body
    # was taken right after its middleware), not the last one
    client = redis.Redis.from_url(redis_url)
    metas = [msgspec.json.decode(client.hget(f"{{ojs}}:job:{job_id}", "meta")) for job_id in ids]
    assert [m["seq"] for m in metas] == [0, 1, 2], metas
