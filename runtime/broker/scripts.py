"""Loads the Lua scripts once and calls them by name.

Each file in ``scripts/`` is one atomic state transition with a header documenting its KEYS,
ARGV and return value. Calls go straight to EVALSHA over the lean pipelined connection
(:mod:`runtime.broker.wire`; redis-py's per-call cost is several times the script's own on the
hot paths) and load the script on NOSCRIPT, so a Redis restart or a SCRIPT FLUSH is harmless.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from runtime.broker import outcome
from runtime.broker.wire import Address, CommandNotSent, Wire


def _load_sources() -> dict[str, str]:
    folder = resources.files("runtime.broker").joinpath("scripts")
    return {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }


SOURCES: dict[str, str] = _load_sources()


class Status(enum.IntEnum):
    """Per-job status codes the transition scripts return."""

    OK = 0
    NOT_FOUND = 1
    CONFLICT = 2
    STALE_CLAIM = 3


class Scripts:
    """The scripts of one Redis client, called by SHA; loaded on first NOSCRIPT (a new or
    restarted server, or SCRIPT FLUSH), so no setup round trip is needed. The calls go over a
    lean connection to the client's server; through the client itself only where that
    connection does not apply (TLS)."""

    def __init__(self, redis: Redis) -> None:
        address = Address.of_client(redis)
        self.wire = Wire(address) if address is not None else None
        self._redis = redis
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SOURCES.items()}

    async def call(self, name: str, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; whatever happened after it was sent is noted for the request
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
        sha = self._shas[name]
        execute = self.wire.execute if self.wire is not None else self._redis.execute_command
        try:
            return await execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await execute("SCRIPT", "LOAD", SOURCES[name])
            return await execute("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self.wire is not None:
            await self.wire.close()
