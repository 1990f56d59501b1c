"""The local Redis Cluster fixture itself (tests/fixtures/redis_cluster.py): it comes up whole,
moves a slot by the resharding protocol while writes go on, announces a proxied node at its
proxy's port, and brings a SIGKILLed primary back with its keys and slots."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode as Seed
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError

from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conftest import skip_or_fail
from tests.fixtures.procs import wait_until
from tests.fixtures.redis_cluster import HOST, SLOTS, ClusterNode, LocalCluster

pytestmark = pytest.mark.slow

MakeCluster = Callable[..., LocalCluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(**options)``: a started `LocalCluster`; every one is stopped after the test
    (whatever it did), and its nodes' logs printed (pytest shows them when the test fails)."""
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    made: list[LocalCluster] = []

    def make(**options: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster-{len(made)}", **options)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
            print(cluster.logs())


def moved_to(client: redis.Redis, key: str) -> tuple[str, int]:
    """Where `client`'s node sends a GET of `key` with MOVED."""
    with pytest.raises(MovedError) as moved:
        client.get(key)
    return moved.value.host, moved.value.port


def set_following_ask(client: redis.Redis, key: str, value: str, *, password: str | None) -> int | None:
    """SET `key` on `client`'s node; when it answers ASK, SET it on the node named, right after
    ASKING on the same connection (a pipeline). The port it was ASKed to, or None."""
    try:
        client.set(key, value)
        return None
    except MovedError:
        raise  # a MovedError is an AskError too: the slot was not where the test thought
    except AskError as ask:
        with redis.Redis(host=ask.host, port=ask.port, password=password, decode_responses=True) as target:
            pipe = target.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.set(key, value)
            assert pipe.execute() == [True, True]
        return int(ask.port)


def test_cluster_comes_up_with_three_primaries_covering_every_slot(make_cluster: MakeCluster) -> None:
    # Given / When
    cluster = make_cluster()
    # Then: three primaries, each with a share of the slots, and together all of them
    ranges = sorted(cluster.slot_map())
    assert len({primary for _, _, primary, _ in ranges}) == 3
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(last + 1 == nxt[0] for (_, last, _, _), nxt in zip(ranges, ranges[1:], strict=False))
    assert len(cluster.primaries()) == 3
    for node in cluster.nodes:
        info = node.client().execute_command("CLUSTER INFO")
        assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == str(SLOTS)
    assert cluster.seed_url == "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in cluster.nodes)
    assert cluster.node_url() == f"redis://{HOST}:{cluster.nodes[0].port}"
    # And: a cluster client from those seeds reaches keys in every node's slots
    client = RedisCluster(startup_nodes=[Seed(HOST, n.port) for n in cluster.nodes], decode_responses=True)
    try:
        keys = [f"spread-{i}" for i in range(30)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == keys
        assert {cluster.node_for_slot(cluster.slot_of(key)).name for key in keys} == {"node-0", "node-1", "node-2"}
    finally:
        client.close()


def test_replicas_follow_one_primary_each(make_cluster: MakeCluster) -> None:
    # Given / When
    cluster = make_cluster(replicas=True)
    # Then: every slot range has one replica, a different one each, and three primaries remain
    ranges = cluster.slot_map()
    assert [len(replicas) for *_, replicas in ranges] == [1, 1, 1]
    assert len(set().union(*(replicas for *_, replicas in ranges))) == 3
    assert {n.name for n in cluster.primaries()} == {"node-0", "node-1", "node-2"}


@pytest.mark.parametrize("behind_proxies", [False, True], ids=["direct", "behind-proxies"])
def test_move_slot_under_writes_moves_every_key_and_the_old_owner_redirects(
        make_cluster: MakeCluster, behind_proxies: bool) -> None:
    # Given: 50 keys of one slot on their owner (hash-tagged, so they share the slot); with
    # `behind_proxies`, clients reach every node only through its proxy (ASK and MOVED say so)
    password = "s3cret pass"
    cluster = make_cluster(password=password, proxied=range(3) if behind_proxies else ())
    slot = cluster.slot_of("{moving}")
    source = cluster.node_for_slot(slot)
    target, bystander = (node for node in cluster.nodes if node is not source)
    target_port = target.announced_port
    assert (target_port != target.port) == behind_proxies
    expected = {f"{{moving}}:{i}": f"v{i}" for i in range(50)}
    for key, value in expected.items():
        source.client().set(key, value)
    batches: list[int] = []
    asked_to: list[int | None] = []

    def write_while_half_moved() -> None:
        # a new key (the source lacks it: ASK) and an old one (ASK once its batch has moved)
        n = len(batches)
        batches.append(n)
        for key, value in ((f"{{moving}}:new-{n}", f"new-{n}"), (f"{{moving}}:{n}", f"updated-{n}")):
            asked_to.append(set_following_ask(source.client(), key, value, password=password))
            expected[key] = value

    # When: the slot moves, 10 keys per MIGRATE, with writes after every batch
    moved = cluster.move_slot(slot, target, batch=10, between_batches=write_while_half_moved)

    # Then: the 50 keys moved in 5 batches; every new key was ASKed to the target
    assert moved == 50 and len(batches) == 5
    assert asked_to[0::2] == [target_port] * 5
    assert set(asked_to) <= {None, target_port}
    # And: every key, written before or during the move, is on the target with its last value
    assert cluster.node_for_slot(slot) is target
    assert source.client().execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    assert target.client().execute_command("CLUSTER COUNTKEYSINSLOT", slot) == len(expected) == 55
    assert {key: target.client().get(key) for key in expected} == expected
    # And: the old owner, and every other primary, send clients to the target with MOVED
    assert moved_to(source.client(), "{moving}:0") == (HOST, target_port)
    assert moved_to(bystander.client(), "{moving}:0") == (HOST, target_port)


def test_a_node_behind_a_proxy_is_announced_at_the_proxy_port(make_cluster: MakeCluster) -> None:
    # Given: node-1 reachable only through a fault proxy
    cluster = make_cluster(proxied=[1])
    hidden, other = cluster.nodes[1], cluster.nodes[0]
    assert hidden.proxy is not None and hidden.proxy.port != hidden.port
    key = next(f"k{i}" for i in range(1000) if cluster.node_for_slot(cluster.slot_of(f"k{i}")) is hidden)
    # When / Then: the other nodes' slot maps and MOVED replies name the proxy's port
    ranges = other.client().execute_command("CLUSTER SLOTS")
    assert [primary[1] for _, _, primary, *_ in ranges if primary[2] == hidden.node_id] == [hidden.proxy.port]
    assert moved_to(other.client(), key) == (HOST, hidden.proxy.port)
    seeds = cluster.seed_url.removeprefix("redis+cluster://").split(",")
    assert f"{HOST}:{hidden.proxy.port}" in seeds and f"{HOST}:{hidden.port}" not in seeds
    # And: the cluster bus keeps the real bus port (ip:port@bus-port in CLUSTER NODES)
    with other.raw_client(decode_responses=True) as raw:
        raw.set_response_callback("CLUSTER NODES", lambda reply, **_: reply)
        line = next(ln for ln in raw.execute_command("CLUSTER NODES").splitlines() if hidden.node_id in ln)
    assert f" {HOST}:{hidden.proxy.port}@{hidden.bus_port} " in line
    # And: following MOVED reaches the node through the proxy
    hidden.proxy.watch(b"proxied-value")
    with redis.Redis(host=HOST, port=hidden.proxy.port, decode_responses=True) as through:
        through.set(key, "proxied-value")
    assert hidden.proxy.seen(b"proxied-value") == 1
    assert hidden.client().get(key) == "proxied-value"


def test_a_killed_primary_with_aof_comes_back_with_its_keys_and_slots(make_cluster: MakeCluster) -> None:
    # Given: keys on node-1, every write fsynced before it is answered
    cluster = make_cluster(aof=True)
    victim = cluster.nodes[1]
    keys = [f"k{i}" for i in range(300) if cluster.node_for_slot(cluster.slot_of(f"k{i}")) is victim]
    for key in keys:
        victim.client().set(key, f"kept-{key}")
    slots_before = cluster.slot_map()
    # When: it is SIGKILLed, the others see it fail, and it starts again on its folder
    cluster.kill(victim)
    survivors = [node for node in cluster.nodes if node is not victim]
    wait_until(lambda: all(failing(node, victim) for node in survivors), timeout_s=30,
               what="the survivors to flag the killed primary as failed")
    cluster.restart(victim)
    # Then: same node id, same slots everywhere, and every key it had
    assert cluster.slot_map() == slots_before
    assert cluster.node_for_slot(cluster.slot_of(keys[0])) is victim
    assert [victim.client().get(key) for key in keys] == [f"kept-{key}" for key in keys]
    assert len(keys) > 50


def failing(observer: ClusterNode, node: ClusterNode) -> bool:
    peers = observer.client().execute_command("CLUSTER NODES").values()
    return any(peer["node_id"] == node.node_id and "fail" in peer["flags"] for peer in peers)


def test_a_restarted_primary_waited_for_until_it_serves_answers_for_its_slots(make_cluster: MakeCluster) -> None:
    # Given: no full coverage required, a key on node-1, and node-1 killed until the others
    # flag it as failed
    cluster = make_cluster(aof=True, full_coverage=False)
    victim = cluster.nodes[1]
    key = next(f"k{i}" for i in range(300) if cluster.node_for_slot(cluster.slot_of(f"k{i}")) is victim)
    victim.client().set(key, "kept")
    cluster.kill(victim)
    survivors = [node for node in cluster.nodes if node is not victim]
    wait_until(lambda: all(failing(node, victim) for node in survivors), timeout_s=30,
               what="the survivors to flag the killed primary as failed")
    # When: it starts again, waited for only until it serves
    cluster.restart(victim, settle=False)
    # Then: it answers for its slot, and the survivors, still ok themselves, send its clients to it
    assert victim.client().get(key) == "kept"
    assert all(node.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok" for node in survivors)
    assert moved_to(survivors[0].client(), key) == (HOST, victim.port)
    # And: the cluster settles with it in the end
    cluster.wait_settled()
    assert not any(failing(node, victim) for node in survivors)
