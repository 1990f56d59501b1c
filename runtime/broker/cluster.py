"""Redis Cluster: the ``redis+cluster://`` URL, where each slot lives, and the redirects.

The URL names some nodes of the cluster (any of them; the first that answers is used)::

    redis+cluster://[user:password@]host1:6379,host2:6379,host3:6379[/0]
    rediss+cluster://...   (TLS to every node: ?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...,
                            or the OJS_REDIS_TLS_* settings, as for rediss://)

Every key of a namespace carries the namespace's hash tag (``{ojs}:...``), so the whole namespace
is one slot and lives on one primary: each connection talks to the node that owns that slot and
every script stays atomic there. Where a slot lives is learned from the cluster's own answers:
a connection first goes to the node last known to own the slot (at first, a node of the URL), and
a ``MOVED <slot> <host>:<port>`` reply (the command did not run) names the owner, which is noted
for every connection made from that URL in this process (:class:`ClusterTarget`). A node that
cannot be reached (it died; its replica is being promoted), or that leaves a command unanswered
past its deadline (it hangs: its port still takes connections), is forgotten, and the next
connection goes to another node of the URL, which names the new owner once the cluster has one.
The lean connection sends a redirected command again there, transparently; redis-py's
connections close and their client's retry sends it again.

While a slot is being moved (a reshard), its keys are split between two nodes. A command that
finds its key gone answers ``ASK`` (or ``TRYAGAIN``): it did not run, and it is not followed to
the importing node. It waits a little and is sent again until the move is done (the new owner
then answers it), within the command deadline. A script could still find some of its keys moved
half way through, after it wrote others, and Redis does not undo a script's writes when it fails.
Redis checks a script's declared keys before it starts (``TRYAGAIN`` when some are missing, ``ASK``
when all are), and most transitions declare the bare prefix, a key that never exists, so they are
refused before they start; a transition whose declared keys all exist would not be. So on a
cluster every transition's first command touches a key that never exists (:data:`GUARD_SUFFIX`),
which stops the script before it writes anything whenever its slot is being moved, whatever keys
it declares, with a reply of its own (:data:`GUARD_REPLY`): only that reply, and the cluster's own
redirects, are taken for "did not run" (:mod:`runtime.broker.scripts` builds that library;
tests/test_cluster_reshard.py).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis import exceptions as rx
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot

from runtime.broker.sentinel import host_port
from runtime.broker.wire import CommandNotSent

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
# Appended to a transition's first key: a name no key of the namespace ever has (the NUL byte),
# in the same slot (the key's hash tag decides the slot, not the rest of its name).
GUARD_SUFFIX = "\0slot-guard"
# What a transition stopped by its slot guard answers (a TRYAGAIN, which is what it is). Only
# this marker says that a script did not run: any other script error may come after writes.
GUARD_REPLY = "TRYAGAIN slot being moved (ojs slot guard): the transition did not run"
# How long a command whose slot is being moved waits before it is sent again; it doubles, up to
# the last value, until the command deadline is spent.
MIGRATING_BACKOFF_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
# Redirects one command may follow (a slot map that changes again while it is sent).
MAX_REDIRECTS = 16

# Commands whose first argument is not a key: sent to the node the connection last used.
_KEYLESS = frozenset({
    "PING", "AUTH", "HELLO", "SELECT", "INFO", "FUNCTION", "SCRIPT", "CLIENT", "CONFIG", "WAIT",
    "WAITAOF", "TIME", "DBSIZE", "FLUSHALL", "FLUSHDB", "ROLE", "CLUSTER", "COMMAND",
    "SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "PUBLISH", "SLOWLOG", "LATENCY",
    "ACL", "LASTSAVE", "ECHO", "SCAN", "RANDOMKEY", "MULTI", "EXEC", "DISCARD", "UNWATCH", "QUIT",
})


class SlotMoved(CommandNotSent):
    """The slot lives on another node now (``MOVED``): the command did not run; the connection
    was closed and the next one goes to the new owner."""


class SlotMigrating(CommandNotSent):
    """The slot is being moved and the command's keys are not all here (``ASK``, ``TRYAGAIN``,
    a transition stopped by its guard), or the cluster is down for it (``CLUSTERDOWN``,
    ``MASTERDOWN``): the command did not run. `down` tells the last two apart: the node may no
    longer serve the slot at all (a minority partition, a wiped node), so another is asked next."""

    def __init__(self, message: str, *, down: bool = False) -> None:
        super().__init__(message)
        self.down = down


class ClusterTarget:
    """The nodes a URL names, the credentials, and what this process has learned of the slot
    map. Shared by every connection made from one URL."""

    __slots__ = ("seeds", "username", "password", "tls", "slots", "last", "home_key", "home_slot")

    def __init__(self, seeds: list[tuple[str, int]], *, username: str | None = None,
                 password: str | None = None, tls: bool = False, home_key: str | None = None) -> None:
        if not seeds:
            raise ValueError("a redis+cluster:// URL needs at least one node")
        self.seeds = list(seeds)
        self.username, self.password = username, password
        self.tls = tls
        # The namespace's prefix: commands without a key (SCAN, INFO, FUNCTION LOAD, WAIT) are
        # about the namespace, so they go to the owner of its slot, and every redis-py
        # connection checks that it reached that owner before it is used.
        self.home_key = home_key
        self.home_slot = key_slot(home_key.encode()) if home_key else None
        self.slots: dict[int, tuple[str, int]] = {}  # slot -> owner, as the cluster last said
        self.last: tuple[str, int] = self.seeds[0]  # where keyless commands go, and unknown slots

    def __repr__(self) -> str:
        return f"ClusterTarget({','.join(f'{h}:{p}' for h, p in self.seeds)})"

    def node_for(self, slot: int | None) -> tuple[str, int]:
        """The node to send a command on `slot` to (a command without a key: on the namespace's)."""
        if slot is None:
            slot = self.home_slot
        if slot is None:
            return self.last
        return self.slots.get(slot, self.last)

    def moved(self, slot: int, node: tuple[str, int]) -> None:
        self.slots[slot] = node
        self.last = node

    def unreachable(self, node: tuple[str, int]) -> None:
        """No connection could be made to `node`, or it lost or left unanswered a command sent
        to it (it died or hangs, or a failover is under way): forget what it owned and go to
        another node of the URL next, which will name the slot's new owner with ``MOVED`` once
        the cluster has promoted one (or `node` again, if it still owns the slot)."""
        for slot in [slot for slot, owner in self.slots.items() if owner == node]:
            del self.slots[slot]
        if node in self.seeds:
            self.seeds.append(self.seeds.pop(self.seeds.index(node)))
        if self.last == node or self.last not in self.seeds:
            self.last = self.seeds[0]


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0].lower() in SCHEMES  # type: ignore[union-attr]


def parse_url(url: str, *, home_key: str | None = None) -> tuple[ClusterTarget, dict[str, Any]]:
    """The nodes of `url`, and redis-py's connection keywords for every node (username,
    password, and the ``ssl_*`` options of a rediss+cluster:// URL's query), parsed as redis-py
    parses a one-node URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("not a redis+cluster:// URL")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds = [host_port(entry.strip(), DEFAULT_PORT) for entry in hosts.split(",") if entry.strip()]
    if not seeds:  # before the one-node URL below is made of the first
        raise ValueError("a redis+cluster:// URL needs at least one node")
    tls = scheme == "rediss+cluster"
    one_node = urlunsplit(("rediss" if tls else "redis", f"{userinfo}{at}{_netloc(seeds[0])}", parts.path,
                           parts.query, ""))
    options = redis.connection.parse_url(one_node)
    if int(options.pop("db", 0) or 0) != 0:
        raise ValueError("a Redis Cluster has database 0 only: drop the database from the redis+cluster:// URL")
    for node_specific in ("host", "port", "connection_class"):
        options.pop(node_specific, None)
    target = ClusterTarget(seeds, username=options.get("username"), password=options.get("password"), tls=tls,
                           home_key=home_key)
    return target, options


def _netloc(node: tuple[str, int]) -> str:
    host, port = node
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def slot_of_command(args: tuple[Any, ...]) -> int | None:
    """The slot of a command's key (its first key, for FCALL and EVALSHA), None for a command
    without one."""
    if len(args) < 2:
        return None
    name = args[0].upper() if isinstance(args[0], str) else bytes(args[0]).decode().upper()
    if name in ("FCALL", "FCALL_RO", "EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        if len(args) < 4 or int(args[2]) == 0:
            return None
        key = args[3]
    elif name in _KEYLESS:
        return None
    elif name in ("XREAD", "XREADGROUP"):
        names = [a.upper() if isinstance(a, str) else bytes(a).decode(errors="replace").upper() for a in args]
        if "STREAMS" not in names or names.index("STREAMS") + 1 >= len(args):
            return None
        key = args[names.index("STREAMS") + 1]
    elif name in ("MEMORY", "OBJECT", "XINFO"):  # a subcommand first: MEMORY USAGE key, ...
        if len(args) < 3:
            return None
        key = args[2]
    else:
        key = args[1]
    slot: int = key_slot(key.encode() if isinstance(key, str) else bytes(key))
    return slot


def redirect_of(message: str) -> tuple[str, int | None, tuple[str, int] | None] | None:
    """What a cluster error reply says: ``("MOVED", slot, node)``, ``("ASK", slot, node)``,
    ``("TRYAGAIN"|"CLUSTERDOWN"|"MASTERDOWN", None, None)``; None for any other error (a script
    error such as "Script attempted to access a non local key" may come after the script wrote:
    it is the caller's, never taken for "did not run")."""
    head, _, rest = message.partition(" ")
    if head in ("MOVED", "ASK"):
        slot, _, where = rest.partition(" ")
        host, _, port = where.rpartition(":")
        return head, int(slot), (host.strip("[]"), int(port))
    if head in ("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"):  # the guard's reply is a TRYAGAIN
        return head, None, None
    return None


def refusal(err: rx.ResponseError, target: ClusterTarget, node: tuple[str, int] | None = None) -> CommandNotSent | None:
    """The error to raise for a cluster error reply, else None; noted in `target`: a MOVED's
    owner, and `node` (the one that answered) left for another when it says the cluster is down
    for the slot. redis-py parses the redirects into classes of their own, which drop the reply's
    first word."""
    message = str(err)
    if isinstance(err, rx.MovedError):
        message = f"MOVED {message}"
    elif isinstance(err, rx.AskError):
        message = f"ASK {message}"
    elif isinstance(err, rx.TryAgainError):
        message = f"TRYAGAIN {message}"
    elif isinstance(err, rx.MasterDownError):
        message = f"MASTERDOWN {message}"
    elif isinstance(err, rx.ClusterDownError):
        message = f"CLUSTERDOWN {message}"
    redirect = redirect_of(message)
    if redirect is None:
        return None
    kind, slot, owner = redirect
    if kind == "MOVED" and slot is not None and owner is not None:
        if not owner[0]:  # an unknown endpoint: the node that answered, on that port
            owner = (target.node_for(slot)[0], owner[1])
        target.moved(slot, owner)
        return SlotMoved(f"{message} (the command did not run; sent again to the new owner)")
    down = kind in ("CLUSTERDOWN", "MASTERDOWN")
    if down and node is not None:
        target.unreachable(node)  # it may no longer serve the slot at all: ask another node next
    return SlotMigrating(f"{message} (the slot is being moved or the cluster is down for it; the command did not run)",
                         down=down)


# --- redis-py: connections to the node that owns the namespace's slot -----------------------------


class ClusterNodeConnection(redis.asyncio.Connection):
    """A redis-py asyncio connection to the node last known to own the slot; a redirect closes it
    and raises a ConnectionError (the command did not run), which the client's retry sends again,
    to the new owner."""

    def __init__(self, *, cluster: ClusterTarget, **kwargs: Any) -> None:
        self.cluster = cluster
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        self.host, self.port = node = self.cluster.node_for(None)
        try:
            await super()._connect()
        except (OSError, TimeoutError):
            self.cluster.unreachable(node)
            raise

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        if self.cluster.home_key:  # a MOVED here reconnects to the owner (the connect is retried)
            await self.send_command("EXISTS", self.cluster.home_key, check_health=False)
            await self.read_response()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except rx.ResponseError as err:
            refused = refusal(err, self.cluster, (self.host, self.port))
            if refused is None:
                raise
            await self.disconnect()
            raise refused from err
        except (rx.TimeoutError, rx.ConnectionError):
            # A hung node still takes connections: only its silence tells that it is gone.
            self.cluster.unreachable((self.host, self.port))
            raise


class ClusterNodeSSLConnection(ClusterNodeConnection, redis.asyncio.SSLConnection):
    """:class:`ClusterNodeConnection` over TLS (rediss+cluster://)."""


class BlockingClusterNodeConnection(redis.Connection):
    """:class:`ClusterNodeConnection` for redis-py's synchronous client."""

    def __init__(self, *, cluster: ClusterTarget, **kwargs: Any) -> None:
        self.cluster = cluster
        super().__init__(**kwargs)

    def _connect(self) -> Any:
        self.host, self.port = node = self.cluster.node_for(None)
        try:
            return super()._connect()
        except (OSError, TimeoutError):
            self.cluster.unreachable(node)
            raise

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        if self.cluster.home_key:
            self.send_command("EXISTS", self.cluster.home_key, check_health=False)
            self.read_response()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except rx.ResponseError as err:
            refused = refusal(err, self.cluster, (self.host, self.port))
            if refused is None:
                raise
            self.disconnect()
            raise refused from err
        except (rx.TimeoutError, rx.ConnectionError):
            self.cluster.unreachable((self.host, self.port))
            raise


class BlockingClusterNodeSSLConnection(BlockingClusterNodeConnection, redis.SSLConnection):
    """:class:`BlockingClusterNodeConnection` over TLS."""


class ClusterNodeRedis(redis.asyncio.Redis):
    """redis-py's client on a cluster: its pipelines are transactions. A redirect of one of a
    pipeline's commands makes redis-py's retry send the whole pipeline again; within MULTI/EXEC
    that is safe (a refused command aborts the transaction: none of it ran), without it the
    commands before the refused one would run twice. A namespace is one slot, so MULTI applies."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return super().pipeline(transaction=True, shard_hint=shard_hint)  # whatever was asked: see above


class BlockingClusterNodeRedis(redis.Redis):
    """:class:`ClusterNodeRedis` for redis-py's synchronous client."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return super().pipeline(transaction=True, shard_hint=shard_hint)


def pool_options(url: str, *, blocking: bool = False, home_key: str | None = None,
                 wait_s: float = 5.0) -> dict[str, Any]:
    """What a redis-py connection pool needs for a ``redis+cluster://`` URL. Its connections send
    a command again after a redirect (and only then: it surely did not run), pausing while a slot
    is being moved, for about `wait_s` (the command deadline) in all."""
    target, options = parse_url(url, home_key=home_key)
    if blocking:
        kind: type = BlockingClusterNodeSSLConnection if target.tls else BlockingClusterNodeConnection
    else:
        kind = ClusterNodeSSLConnection if target.tls else ClusterNodeConnection
    backoff = ExponentialBackoff(cap=MIGRATING_BACKOFF_S[-1], base=MIGRATING_BACKOFF_S[0])
    retry_kind = redis.retry.Retry if blocking else redis.asyncio.retry.Retry
    retries = len(MIGRATING_BACKOFF_S) + math.ceil(wait_s / MIGRATING_BACKOFF_S[-1])
    retry = retry_kind(backoff, retries, supported_errors=(SlotMoved, SlotMigrating))
    return {"connection_class": kind, "cluster": target, "retry": retry, **options}
