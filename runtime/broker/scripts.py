"""Loads the Lua scripts once and calls them by name.

Each file in ``scripts/`` is one atomic state transition with a header documenting its KEYS,
ARGV and return value. redis-py's Script objects call EVALSHA and fall back to loading the
script on NOSCRIPT, so a Redis restart or a SCRIPT FLUSH is harmless.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


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
    """The registered scripts of one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source) for name, source in SOURCES.items()
        }

    async def call(self, name: str, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))
