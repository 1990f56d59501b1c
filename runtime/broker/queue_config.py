"""A queue's settings (``queue:<q>:config``), as the admin API reads and changes them.

- ``backpressure`` (the backpressure extension): ``max_depth`` bounds the queue's available,
  scheduled, retryable and pending jobs; an enqueue past it is refused whole with 429
  ``QUEUE_FULL`` (strategy ``reject``, the one we serve); past ``warning_threshold`` of it,
  enqueue replies carry the ``X-OJS-Queue-*`` headers. enqueue.lua reads both fields.
- ``rate_limit``: at most ``limit`` claims per ``period`` (fetch.lua reads ``rl_max`` and
  ``rl_window_ms``, the fields an enqueue's queue-wide rate limit also sets).
- ``concurrency``: at most N of the queue's jobs active at once, across every worker (fetch.lua
  reads ``max_active`` against the queue's exact active count).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.keys import Keys
from runtime.broker.rate_limits import period_ms
from runtime.errors import InvalidRequest, Unsupported

MAX_DEPTH = 1_000_000_000


class Backpressure(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_depth: int = 0  # 0: unbounded
    strategy: Literal["reject", "block", "drop_oldest"] = "reject"
    warning_threshold: float = 0.8
    max_size_bytes: int | None = None


class RateLimit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: int
    period: str = "PT1S"


class QueueConfigRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backpressure: Backpressure | None | msgspec.UnsetType = msgspec.UNSET
    max_depth: int | msgspec.UnsetType = msgspec.UNSET  # shorthand for backpressure.max_depth
    rate_limit: RateLimit | None | msgspec.UnsetType = msgspec.UNSET
    concurrency: int | None | msgspec.UnsetType = msgspec.UNSET


class QueueRateLimitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT .../queues/{q}/rate-limit`` (the rate-limiting extension's queue-level form)."""

    concurrency: int | None | msgspec.UnsetType = msgspec.UNSET
    rate: RateLimit | None | msgspec.UnsetType = msgspec.UNSET

    def as_config(self) -> QueueConfigRequest:
        return QueueConfigRequest(rate_limit=self.rate, concurrency=self.concurrency)


def _changes(req: QueueConfigRequest) -> tuple[dict[str, str], list[str]]:
    """(fields to set, fields to delete) of the config hash."""
    put: dict[str, str] = {}
    drop: list[str] = []
    bp = req.backpressure
    if isinstance(req.max_depth, int):
        bp = Backpressure(max_depth=req.max_depth) if not isinstance(bp, Backpressure) else bp
    if isinstance(bp, Backpressure):
        if bp.strategy != "reject":
            raise Unsupported(f"backpressure strategy '{bp.strategy}' is not supported; use 'reject'.")
        if bp.max_size_bytes is not None:
            raise Unsupported("backpressure.max_size_bytes is not supported; bound the queue by max_depth.")
        if not 0 <= bp.max_depth <= MAX_DEPTH:
            raise InvalidRequest(f"backpressure.max_depth must be between 0 and {MAX_DEPTH} (0: unbounded).")
        if not 0 < bp.warning_threshold <= 1:
            raise InvalidRequest("backpressure.warning_threshold must be above 0 and at most 1.")
        if bp.max_depth == 0:
            drop += ["max_depth", "bp_warn"]
        else:
            put.update(max_depth=str(bp.max_depth), bp_warn=repr(bp.warning_threshold))
    elif bp is None:
        drop += ["max_depth", "bp_warn"]
    rl = req.rate_limit
    if isinstance(rl, RateLimit):
        if not 1 <= rl.limit <= MAX_DEPTH:
            raise InvalidRequest("rate_limit.limit must be a positive integer.")
        put.update(rl_max=str(rl.limit), rl_window_ms=str(period_ms(rl.period, "rate_limit.period", most=None)))
    elif rl is None:
        drop += ["rl_max", "rl_window_ms"]
    if isinstance(req.concurrency, int):
        if isinstance(req.concurrency, bool) or not 0 <= req.concurrency <= MAX_DEPTH:
            raise InvalidRequest(f"concurrency must be between 0 and {MAX_DEPTH}.")
        put["max_active"] = str(req.concurrency)
    elif req.concurrency is None:
        drop.append("max_active")
    return put, drop


class QueueConfig:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def update(self, queue: str, req: QueueConfigRequest) -> dict[str, Any]:
        put, drop = _changes(req)
        async with self.redis.pipeline(transaction=True) as pipe:
            if drop:
                pipe.hdel(self.keys.config(queue), *drop)
            if put:
                pipe.hset(self.keys.config(queue), mapping=put)
            pipe.hgetall(self.keys.config(queue))
            replies = await pipe.execute()
        return view(replies[-1])

    async def read(self, queue: str) -> dict[str, Any]:
        return view(await self.redis.hgetall(self.keys.config(queue)))


def view(raw: dict[bytes, bytes]) -> dict[str, Any]:
    get = raw.get
    backpressure = None
    if (depth := get(b"max_depth")) is not None:
        backpressure = {"max_depth": int(depth), "strategy": "reject",
                        "warning_threshold": float(get(b"bp_warn", b"0.8"))}
    rate_limit = None
    if (limit := get(b"rl_max")) is not None:
        window = int(get(b"rl_window_ms", b"1000"))
        rate_limit = {"limit": int(limit), "period": timefmt.format_duration_ms(window), "window_ms": window}
    concurrency = get(b"max_active")
    return {"backpressure": backpressure, "max_depth": backpressure["max_depth"] if backpressure else None,
            "rate_limit": rate_limit, "concurrency": int(concurrency) if concurrency is not None else None}
