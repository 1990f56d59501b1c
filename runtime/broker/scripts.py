"""The broker's Lua, loaded as one Redis Functions library and called by name.

Each file in ``scripts/`` but ``lib.lua`` is one atomic state transition, with a header
documenting its KEYS, ARGV and return value. ``lib.lua`` holds what transitions share (event
emission, the queue score, the end-of-job rules for unique locks and workflows, cancellation,
expiry), defined once. The library is assembled here::

    #!lua name=ojs_<digest>
    local S = {...}   -- the status codes below
    local K = {...}   -- the key suffixes of runtime.broker.keys
    local D = {...}   -- the values of the retry fields a job hash leaves out (records.py)
    <lib.lua>
    redis.register_function("ojs_<digest>_<name>", function(KEYS, ARGV) <name>.lua end)
    ...

Library and function names carry a digest of the whole source, so servers of two versions
(a rolling deploy) each call their own code, never the other's. Calls go straight to FCALL over
the lean pipelined connection (:mod:`runtime.broker.wire`; redis-py's per-call cost is several
times the function's own on the hot paths); the library is loaded on the first "function not
found" (a new or restarted server, or FUNCTION FLUSH), so no setup round trip is needed. Redis
stores loaded functions in its RDB and AOF, so a restart on its data keeps them.

Measured against a shared prelude joined to each EVAL script, on the W2 drain: see the README's
performance section. Functions keep the helpers compiled once per server, not per call.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runtime.broker import outcome
from runtime.broker.cluster import GUARD_REPLY, GUARD_SUFFIX
from runtime.broker.durability import REPLICATED_TRANSITIONS, ReplicatedWrites
from runtime.broker.keys import SUFFIXES
from runtime.broker.records import RETRY_FIELD_DEFAULTS
from runtime.broker.wire import Address, CommandNotSent, Wire

LIBRARY_FILE = "lib"


class Status(enum.IntEnum):
    """Status codes the transitions return: the one table, shared with the Lua library (as S)."""

    OK = 0
    NOT_FOUND = 1
    CONFLICT = 2
    STALE_CLAIM = 3
    DUPLICATE_ID = 4  # enqueue: a client-chosen id exists already
    CRON_CLAIMED = 5  # enqueue: another server fired this cron tick
    CRON_SKIPPED = 6  # enqueue: the tick was consumed without a job (overlap)
    UNIQUE_CONFLICT = 7  # a unique job's lock is held by another live job
    QUEUE_FULL = 8  # enqueue: a bounded queue has no room (the backpressure extension)
    SCHEMAS_CHANGED = 9  # enqueue: the schema registry changed since the args were checked


def _load_sources() -> dict[str, str]:
    folder = resources.files("runtime.broker").joinpath("scripts")
    return {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }


SOURCES: dict[str, str] = _load_sources()
TRANSITIONS: tuple[str, ...] = tuple(sorted(name for name in SOURCES if name != LIBRARY_FILE))


def _lua_table(values: dict[str, Any]) -> str:
    def literal(v: Any) -> str:
        return str(int(v)) if isinstance(v, int) else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ", ".join(f"{name} = {literal(v)}" for name, v in sorted(values.items())) + "}"


def _prelude() -> str:
    return (f"local S = {_lua_table({s.name: s.value for s in Status})}\n"
            f"local K = {_lua_table(SUFFIXES)}\n"
            f"local D = {_lua_table(RETRY_FIELD_DEFAULTS)}\n"
            f"{SOURCES[LIBRARY_FILE]}\n")


def _digest() -> str:
    whole = _prelude() + "".join(f"{name}\n{SOURCES[name]}" for name in TRANSITIONS)
    return hashlib.sha1(whole.encode()).hexdigest()[:12]


LIBRARY_NAME = f"ojs_{_digest()}"
# On a Redis Cluster every transition begins with its slot guard (runtime.broker.cluster: a
# script must not start while its slot is being moved); a library of its own, so a standalone
# server runs none of it.
CLUSTER_LIBRARY_NAME = f"{LIBRARY_NAME}c"
# pcall: the cluster's refusal comes back as a value, and the transition answers with the one
# reply that means "did not run" (runtime.broker.cluster.GUARD_REPLY).
_GUARD = (f'if type(redis.pcall("EXISTS", KEYS[1] .. "{GUARD_SUFFIX.replace(chr(0), chr(92) + "0")}")) == "table" '
          f'then return redis.error_reply("{GUARD_REPLY}") end\n')


def function_name(transition: str, *, cluster: bool = False) -> str:
    return f"{CLUSTER_LIBRARY_NAME if cluster else LIBRARY_NAME}_{transition}"


# A transition file may begin with a part that runs once, when the library loads: everything
# above this line (its contract's comment, constant tables). The rest is the body of the
# function, run on each call. Each transition sits in a block of its own, so what its once part
# defines is seen by its function alone.
PER_CALL_LINE = "---- per call ----\n"


def _split_once(source: str) -> tuple[str, str]:
    once, marker, per_call = source.partition(PER_CALL_LINE)
    return (once, per_call) if marker else ("", source)


def library_code(*, cluster: bool = False) -> str:
    """The whole library, as FUNCTION LOAD takes it."""
    parts = [f"#!lua name={CLUSTER_LIBRARY_NAME if cluster else LIBRARY_NAME}\n", _prelude()]
    guard = _GUARD if cluster else ""
    for name in TRANSITIONS:
        once, per_call = _split_once(SOURCES[name])
        parts.append(f"do\n{once}"
                     f'redis.register_function("{function_name(name, cluster=cluster)}", function(KEYS, ARGV)\n'
                     f"rcall = redis.call\n{guard}{per_call}\nend)\nend\n")
    return "".join(parts)


LIBRARY_CODE = library_code()
CLUSTER_LIBRARY_CODE = library_code(cluster=True)


def _is_missing_function(err: ResponseError) -> bool:
    return "function not found" in str(err).lower()


class Scripts:
    """The transitions of one Redis client, called by function name. The calls go over a lean
    connection to the client's server; through the client itself only where that connection
    does not apply (a custom connection class)."""

    def __init__(self, redis: Redis, *, command_timeout_s: float | None = None,
                 replicas: int = 0, replication_timeout_ms: int = 0) -> None:
        address = Address.of_client(redis)
        if address is not None and command_timeout_s is not None:
            address = address.with_timeout(command_timeout_s)
        self.wire = Wire.of(address) if address is not None else None
        self._redis = redis
        cluster = address is not None and address.cluster is not None
        self._names = {name: function_name(name, cluster=cluster) for name in TRANSITIONS}
        self._library = CLUSTER_LIBRARY_CODE if cluster else LIBRARY_CODE
        self._execute = self.wire.execute if self.wire is not None else redis.execute_command
        # OJS_DURABILITY=replicated: enqueue, ack and nack wait for `replicas` (runtime.broker.durability),
        # over a connection of their own.
        self._replicated_wire: Wire | None = None
        self._replicated: ReplicatedWrites | None = None
        if replicas > 0:
            if address is not None:
                self._replicated_wire = Wire.of(address)
                send_many = self._replicated_wire.execute_many
            else:
                send_many = self._pipelined
            self._replicated = ReplicatedWrites(send_many, replicas=replicas, timeout_ms=replication_timeout_ms)

    async def call(self, name: str, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one transition; whatever happened after it was sent is noted for the request
        (:mod:`runtime.broker.outcome`)."""
        try:
            reply = await self._call(name, keys, args)
        except CommandNotSent:
            raise
        except BaseException:
            outcome.note_sent()
            raise
        outcome.note_sent()
        return reply

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        function = self._names[name]
        execute = self._execute
        if self._replicated is not None and name in REPLICATED_TRANSITIONS:
            execute = self._call_replicated
        try:
            return await execute("FCALL", function, len(keys), *keys, *args)
        except ResponseError as err:
            if not _is_missing_function(err):
                raise
        await self.load()
        return await execute("FCALL", function, len(keys), *keys, *args)

    async def _call_replicated(self, *command: Any) -> Any:
        assert self._replicated is not None
        return await self._replicated.call(command)

    async def _pipelined(self, *commands: Sequence[Any]) -> list[Any]:
        """Commands back to back on one pooled connection (where no lean connection applies)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def load(self) -> None:
        """Load (or reload) this version's library; harmless when it is there already."""
        await self._execute("FUNCTION", "LOAD", "REPLACE", self._library)

    async def close(self) -> None:
        if self.wire is not None:
            await self.wire.close()
        if self._replicated_wire is not None:
            await self._replicated_wire.close()
