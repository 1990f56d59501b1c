"""Where commands go on a real Redis Cluster: the namespace's commands without a key (SCAN, INFO,
FUNCTION LOAD) reach the owner of its slot from the first one, whichever node the URL names first;
a handler's own connection sends each command to its key's owner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from runtime import RedisConnection
from runtime.broker.clients import blocking_client, redis_client
from runtime.broker.wire import Address, CommandNotSent, Wire
from runtime.config import Settings
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conftest import skip_or_fail
from tests.fixtures.redis_cluster import HOST, LocalCluster

pytestmark = pytest.mark.slow

PREFIX = "{ojs-routing}:"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    with LocalCluster() as running:
        owner = running.node_for_slot(running.slot_of(PREFIX))
        owner.client().set(f"{PREFIX}marker", "here")
        yield running


def _url_not_starting_at_the_owner(cluster: LocalCluster) -> str:
    owner = cluster.node_for_slot(cluster.slot_of(PREFIX))
    others = [node for node in cluster.nodes if node is not owner]
    return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in (*others, owner))


def test_a_keyless_first_command_reaches_the_namespace_owner(cluster: LocalCluster) -> None:
    url = _url_not_starting_at_the_owner(cluster)
    settings = Settings(redis_url=url, key_prefix=PREFIX)

    async def first_commands() -> tuple[list[bytes], object]:
        client = redis_client(settings)
        try:
            found = [key async for key in client.scan_iter(match=f"{PREFIX}*")]
            wire = Wire.of(Address.of_client(client))  # type: ignore[arg-type]
            try:
                keyspace = await wire.execute("DBSIZE")
            finally:
                await wire.close()
            return found, keyspace
        finally:
            await client.aclose()

    found, size = asyncio.run(first_commands())
    assert found == [f"{PREFIX}marker".encode()]
    assert size == 1
    sync = blocking_client(settings)
    try:
        assert list(sync.scan_iter(match=f"{PREFIX}*")) == [f"{PREFIX}marker".encode()]
    finally:
        sync.close()


def test_a_handlers_connection_sends_each_command_to_its_keys_owner(cluster: LocalCluster) -> None:
    keys = {}
    for n in range(200):  # one key per primary at least
        owner = cluster.node_for_slot(cluster.slot_of(f"k{n}")).name
        keys.setdefault(owner, f"k{n}")
    assert len(keys) == 3

    async def go() -> list[object]:
        connection = RedisConnection.from_url(_url_not_starting_at_the_owner(cluster))
        try:
            for owner, key in keys.items():
                await connection.execute("SET", key, owner)
            return [await connection.execute("GET", key) for key in keys.values()]
        finally:
            await connection.close()

    assert asyncio.run(go()) == [owner.encode() for owner in keys]
    for owner, key in keys.items():
        node = next(node for node in cluster.nodes if node.name == owner)
        assert node.client().get(key) == owner


def test_a_pipeline_refused_half_way_through_a_slot_move_runs_none_of_it(cluster: LocalCluster) -> None:
    """A pipeline whose second command finds its key moved: redis-py sends the pipeline again
    after the refusal, so on a cluster pipelines are transactions (a refused command aborts the
    MULTI), and the first command must not have run, however often it was sent."""
    prefix = "{ojs-pipeline}:"
    slot = cluster.slot_of(prefix)
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    source.client().set(f"{prefix}x", 0)
    source.client().set(f"{prefix}y", "moved")
    settings = Settings(redis_url=_url_not_starting_at_the_owner(cluster), key_prefix=prefix,
                        redis_command_timeout_ms=500)

    async def incr_and_get(move_first: bool) -> list[object]:
        client = redis_client(settings)
        try:
            assert await client.get(f"{prefix}x") is not None  # connected before the move begins
            if move_first:
                target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
                source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
                source.client().execute_command("MIGRATE", HOST, target.port, f"{prefix}y", 0, 5000)
            async with client.pipeline(transaction=False) as pipe:
                pipe.incr(f"{prefix}x")
                pipe.get(f"{prefix}y")
                return list(await pipe.execute())
        finally:
            await client.aclose()

    try:
        with pytest.raises(CommandNotSent):
            asyncio.run(incr_and_get(move_first=True))
        assert source.client().get(f"{prefix}x") == "0", "a command of a refused pipeline ran"
    finally:
        cluster.move_slot(slot, target)  # finish the move: every key on the target, the slot too
    assert asyncio.run(incr_and_get(move_first=False)) == [1, b"moved"]
