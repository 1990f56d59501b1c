"""The redis+cluster:// URL, command routing by slot and the cluster's redirect replies: the parts
of runtime.broker.cluster that need no server (tests/test_cluster.py runs a real cluster)."""

from __future__ import annotations

import pytest
from redis import exceptions as rx
from redis.crc import key_slot

from runtime.broker.cluster import (
    GUARD_REPLY,
    ClusterTarget,
    SlotMigrating,
    SlotMoved,
    parse_url,
    refusal,
    slot_of_command,
)
from runtime.broker.keys import hash_tag
from runtime.broker.wire import Address, CommandNotSent
from runtime.config import Settings


def test_the_url_names_the_nodes_and_the_credentials_every_node_takes() -> None:
    target, options = parse_url("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert target.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert options == {"username": "app", "password": "s@cret"}
    assert target.node_for(None) == ("10.0.0.1", 7000)


def test_a_cluster_has_database_0_only() -> None:
    parse_url("redis+cluster://h:1/0")
    with pytest.raises(ValueError, match="database 0 only"):
        parse_url("redis+cluster://h:1/3")
    with pytest.raises(ValueError, match="at least one node"):
        parse_url("redis+cluster:///")


def test_the_lean_connection_takes_the_url() -> None:
    address = Address.from_url("redis+cluster://:pw@h:7000")
    assert address is not None and isinstance(address.cluster, ClusterTarget)
    assert address.password == "pw" and address.with_timeout(1.0).cluster is address.cluster


def test_a_command_goes_to_the_slot_of_its_first_key() -> None:
    assert slot_of_command(("FCALL", "f", 2, "{ojs}:job:1", "{ojs}:queues", "x")) == key_slot(b"{ojs}:")
    assert slot_of_command(("FCALL", "f", 0)) is None
    assert slot_of_command(("HGETALL", b"{a}:job")) == key_slot(b"a")
    for keyless in (("PING",), ("FUNCTION", "LOAD", "REPLACE", "code"), ("WAIT", 1, 100), ("INFO", "memory")):
        assert slot_of_command(keyless) is None
    assert slot_of_command(("MEMORY", "USAGE", "{a}:k")) == key_slot(b"a")
    assert slot_of_command(("XREAD", "COUNT", 10, "STREAMS", "{b}:events", "0")) == key_slot(b"b")


def test_moved_names_the_new_owner_for_every_connection_of_the_url() -> None:
    target, _ = parse_url("redis+cluster://seed:1")
    slot = key_slot(b"{ojs}:")
    moved = refusal(rx.ResponseError(f"MOVED {slot} 10.1.1.1:7005"), target)
    assert isinstance(moved, SlotMoved) and isinstance(moved, CommandNotSent)
    assert target.node_for(slot) == ("10.1.1.1", 7005) and target.node_for(None) == ("10.1.1.1", 7005)
    # redis-py's own parse of the same reply drops the first word
    again = refusal(rx.MovedError(f"{slot} 10.1.1.2:7006"), target)
    assert isinstance(again, SlotMoved) and target.node_for(slot) == ("10.1.1.2", 7006)


@pytest.mark.parametrize("reply", [
    rx.ResponseError("ASK 7503 10.0.0.9:7001"), rx.AskError("7503 10.0.0.9:7001"),
    rx.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), rx.TryAgainError("x"),
    rx.ResponseError("CLUSTERDOWN The cluster is down"), rx.ResponseError(GUARD_REPLY),
    rx.ResponseError("MASTERDOWN Link with MASTER is down"),
])
def test_a_slot_being_moved_refuses_without_running_and_is_not_followed(reply: rx.ResponseError) -> None:
    target, _ = parse_url("redis+cluster://seed:1")
    refused = refusal(reply, target)
    assert isinstance(refused, SlotMigrating) and isinstance(refused, CommandNotSent)
    assert target.slots == {} and target.node_for(None) == ("seed", 1)


def test_a_down_cluster_says_so_and_a_moving_slot_does_not() -> None:
    target, _ = parse_url("redis+cluster://seed:1")
    down = refusal(rx.ResponseError("CLUSTERDOWN The cluster is down"), target)
    moving = refusal(rx.ResponseError(GUARD_REPLY), target)
    assert isinstance(down, SlotMigrating) and down.down
    assert isinstance(moving, SlotMigrating) and not moving.down


def test_other_errors_are_the_callers() -> None:
    target, _ = parse_url("redis+cluster://seed:1")
    assert refusal(rx.ResponseError("WRONGTYPE Operation against a key"), target) is None
    # a script error may come after the script wrote: never taken for "did not run"
    for after_writes in ("ERR Script attempted to access a non local key in a cluster node script: f",
                         "ERR Script attempted to access keys that do not hash to the same slot"):
        assert refusal(rx.ResponseError(after_writes), target) is None


def test_a_moved_without_an_endpoint_means_the_node_that_answered() -> None:
    target, _ = parse_url("redis+cluster://seed:1")
    refusal(rx.ResponseError("MOVED 7503 :7005"), target)
    assert target.node_for(7503) == ("seed", 7005)


def test_a_namespace_on_a_cluster_needs_a_hash_tag() -> None:
    assert hash_tag("{ojs}:") == "ojs" and hash_tag("ojs:") is None and hash_tag("{}:") is None
    with pytest.raises(ValueError, match="OJS_KEY_PREFIX must carry a hash tag"):
        Settings(redis_url="redis+cluster://h:1", key_prefix="jobs:")
    Settings(redis_url="redis://h:1", key_prefix="jobs:")  # a single Redis needs none


def test_a_node_that_cannot_be_reached_is_forgotten_and_another_is_asked_next() -> None:
    target, _ = parse_url("redis+cluster://a:1,b:2,c:3")
    slot = key_slot(b"{ojs}:")
    target.moved(slot, ("b", 2))
    target.unreachable(("b", 2))  # the owner died: its replica will be promoted
    assert slot not in target.slots and target.node_for(slot) == ("a", 1)
    target.unreachable(("a", 1))  # and a dead seed is asked last
    assert target.node_for(None) == ("c", 3) and target.seeds == [("c", 3), ("b", 2), ("a", 1)]
    target.unreachable(("z", 9))  # a node the URL does not name: nothing to forget
    assert target.node_for(None) == ("c", 3)


def test_a_node_that_says_the_cluster_is_down_is_left_for_another() -> None:
    # A primary cut off in a minority, or restarted with a wiped nodes.conf, answers CLUSTERDOWN
    # for a slot the cluster has since given to its promoted replica: asking it again cannot help.
    target, _ = parse_url("redis+cluster://a:1,b:2")
    slot = key_slot(b"{ojs}:")
    target.moved(slot, ("a", 1))
    refusal(rx.ResponseError("CLUSTERDOWN The cluster is down"), target, ("a", 1))
    assert target.node_for(slot) == ("b", 2)
    refusal(rx.ResponseError(GUARD_REPLY), target, ("b", 2))  # a slot being moved: the same node again
    assert target.node_for(slot) == ("b", 2)
