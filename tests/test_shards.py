"""A namespace split into shards (OJS_SHARDS), on one real Redis: where each job goes, that every
operation naming a job finds it in its shard, and that each shard stays consistent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.integrity import check_integrity
from runtime.broker.keys import Keys, hash_tag
from runtime.broker.sharded import ShardedBroker
from runtime.broker.shards import (
    SLOTS,
    crc16,
    placement_key,
    shard_of,
    shard_prefixes,
    shard_settings,
)
from runtime.client import Client, Draft
from runtime.config import Settings
from runtime.errors import Duplicate, NotFound
from runtime.ids import uuid7

SHARDS = 3
PREFIX = "{ojs-shards}:"


@pytest.mark.parametrize("count", [2, 3, 4, 6, 12, 64])
def test_each_shard_has_its_own_slot_in_its_slice_of_the_slots(count: int) -> None:
    prefixes = shard_prefixes(PREFIX, count)
    slots = [crc16(hash_tag(p) or "") % SLOTS for p in prefixes]
    width = SLOTS / count
    assert [int(slot // width) for slot in slots] == list(range(count))
    assert shard_prefixes(PREFIX, count) == prefixes  # every process derives the same names
    assert all(p.startswith("{ojs-shards-") and p.endswith("}:") for p in prefixes)


def test_one_shard_is_the_namespace_itself() -> None:
    assert shard_prefixes(PREFIX, 1) == (PREFIX,)
    settings = Settings(key_prefix=PREFIX)
    assert shard_settings(settings) == [settings]


def test_a_prefix_without_a_tag_gets_one_per_shard() -> None:
    prefixes = shard_prefixes("app:", 2)
    assert all(hash_tag(p) is not None for p in prefixes) and len(set(prefixes)) == 2


def test_the_placement_key_is_the_first_that_applies() -> None:
    assert placement_key(queue="q", workflow_id="w", cron_name="c", unique_fingerprint="u") == "w"
    assert placement_key(queue="q", cron_name="c", unique_fingerprint="u", rate_limit_key="r") == "c:c"
    assert placement_key(queue="q", unique_fingerprint="u", rate_limit_key="r") == "u:u"
    assert placement_key(queue="q", rate_limit_key="r") == "r:r"
    assert placement_key(queue="q") == "q:q"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=PREFIX, shards=SHARDS)


@pytest.fixture
def inspect(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _shard_holding(inspect: redis.Redis, settings: Settings, job_id: str) -> list[int]:
    return [i for i, s in enumerate(shard_settings(settings)) if inspect.exists(Keys(s.key_prefix).job(job_id))]


def _consistent(settings: Settings) -> None:
    async def check() -> list[str]:
        problems: list[str] = []
        for s in shard_settings(settings):
            client = redis.asyncio.Redis.from_url(s.redis_url or "")
            try:
                problems += [f"{s.key_prefix} {p}" for p in await check_integrity(client, Keys(s.key_prefix))]
            finally:
                await client.aclose()
        return problems

    assert asyncio.run(check()) == []


def test_jobs_go_to_their_queues_shard_with_ids_of_that_shard(settings: Settings, inspect: redis.Redis) -> None:
    queues = [f"q{n}" for n in range(12)]

    async def go() -> list[tuple[str, str]]:
        async with Client(settings=settings) as client:
            made = [(q, await client.enqueue("t.a", [n], queue=q)) for n, q in enumerate(queues)]
            batch = await client.enqueue_many([Draft(type="t.b", args=[q], options={"queue": q}) for q in queues])
            return made + list(zip(queues, batch, strict=True))  # type: ignore[arg-type]

    placed = asyncio.run(go())
    shards_used = set()
    for queue, job_id in placed:
        home = shard_of(f"q:{queue}", SHARDS)
        assert _shard_holding(inspect, settings, job_id) == [home], (queue, job_id)
        assert shard_of(job_id, SHARDS) == home  # the id names its shard
        shards_used.add(home)
    assert shards_used == set(range(SHARDS))
    _consistent(settings)


def test_a_client_chosen_id_is_found_wherever_its_queue_put_it(settings: Settings, inspect: redis.Redis) -> None:
    # ids that hash to another shard than their queue's: only the lookup of every shard finds them
    queue = "chosen"
    home = shard_of(f"q:{queue}", SHARDS)
    ids = [i for i in (uuid7() for _ in range(60)) if shard_of(i, SHARDS) != home][:3]

    async def go() -> None:
        async with Client(settings=settings) as client:
            for job_id in ids:
                assert await client.enqueue("t.c", [1], queue=queue, id=job_id) == job_id
            assert (await client.get(ids[0]))["state"] == "available"
            assert await client.cancel(ids[1]) == "available"
            assert (await client.get(ids[1]))["state"] == "cancelled"
            with pytest.raises(Duplicate):
                await client.enqueue("t.c", [1], queue=queue, id=ids[2])
            with pytest.raises(NotFound):
                await client.get(uuid7())

    asyncio.run(go())
    assert all(_shard_holding(inspect, settings, job_id) == [home] for job_id in ids)
    _consistent(settings)


def test_a_unique_job_is_unique_across_queues_of_different_shards(settings: Settings) -> None:
    # two queues in different shards; the lock is placed by the fingerprint, so one holder
    queues = ["u0"] + [q for q in (f"u{n}" for n in range(1, 40))
                       if shard_of(f"q:{q}", SHARDS) != shard_of("q:u0", SHARDS)][:1]
    unique = {"keys": ["type", "args"], "on_conflict": "reject"}

    async def go() -> None:
        async with Client(settings=settings) as client:
            await client.enqueue("t.u", [7], queue=queues[0], unique=unique)
            with pytest.raises(Duplicate):
                await client.enqueue("t.u", [7], queue=queues[1], unique=unique)

    asyncio.run(go())
    _consistent(settings)


def test_the_worker_protocol_over_shards(settings: Settings, inspect: redis.Redis) -> None:
    """Fetch fills its count from every shard; ack, nack and heartbeat reach each job's shard."""
    queues = [f"w{n}" for n in range(9)]

    async def go() -> None:
        clients = [redis.asyncio.Redis.from_url(s.redis_url or "") for s in shard_settings(settings)]
        sharded = ShardedBroker([Broker(c, s) for c, s in zip(clients, shard_settings(settings), strict=True)], settings)
        try:
            async with Client(settings=settings) as client:
                ids = [await client.enqueue("t.w", [n], queue=q) for n, q in enumerate(queues)]
            claimed = await sharded.fetch(queues, count=6, worker_id="w-1")
            assert len(claimed) == 6
            more = await sharded.fetch(queues, count=6, worker_id="w-1")
            assert len(more) == 3 and await sharded.fetch(queues, count=6, worker_id="w-1") == []
            held = [job[b"id"].decode() for job in claimed + more]
            assert sorted(held) == sorted(ids)
            assert {shard_of(i, SHARDS) for i in held} == set(range(SHARDS))
            beat = await sharded.heartbeat("w-1", held, visibility_ms=60_000)
            assert sorted(beat.extended) == sorted(held)
            acked = await sharded.ack_many([Completion(job_id=i, worker_id="w-1") for i in held[:5]])
            assert [a.job_id for a in acked] == held[:5]  # type: ignore[union-attr]
            failed = await sharded.fail_many([Failure(job_id=i, verdict="discard", worker_id="w-1") for i in held[5:]],
                                             now_ms=0)
            assert [f.state for f in failed] == ["discarded"] * 4  # type: ignore[union-attr]
            (missing,) = await sharded.ack_many([Completion(job_id="nobody")])
            assert isinstance(missing, NotFound)
            assert await sharded.scheduler_step() == 0
        finally:
            await sharded.close()
            for c in clients:
                await c.aclose()

    asyncio.run(go())
    _consistent(settings)


def test_a_workflow_lives_in_its_ids_shard(settings: Settings, inspect: redis.Redis) -> None:
    async def go() -> list[dict[str, Any]]:
        async with Client(settings=settings) as client:
            flows = [await client.chain([Draft(type="t.s", args=[n], options={"queue": f"s{n}"}) for n in range(4)])
                     for _ in range(SHARDS)]
            return [await client.get_workflow(f["id"]) for f in flows]

    flows = asyncio.run(go())
    assert {shard_of(f["id"], SHARDS) for f in flows} == set(range(SHARDS))  # new ones go round
    for flow in flows:
        home = shard_of(flow["id"], SHARDS)
        started = [step["job_id"] for step in flow["steps"] if step["job_id"] is not None]
        assert started  # the chain's first step
        for job_id in started:
            assert _shard_holding(inspect, settings, job_id) == [home]
        assert inspect.exists(Keys(shard_settings(settings)[home].key_prefix).workflow(flow["id"]))
    _consistent(settings)
