"""Worker pools as the fair-scheduling extension sees them: named groups of workers sharing one
queue selection (queues with weights, and a strategy).

An ``ojs-run`` supervisor's pool processes register under their pool's name (``OJS_POOL_NAME``,
default ``default``) with the queues and weights they were started with. An operator may store a
definition for a pool name (``PUT /ojs/v1/admin/pools/{name}``): the pool's processes read it at
each heartbeat and from then on use its weights and strategy for the queues they serve. A
definition never adds a queue to a pool (its processes may have no handler for that queue's jobs);
weights of queues a pool does not serve are kept for the pools that do.

``pools`` (hash): pool name -> definition (JSON).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from runtime import fairness, timefmt
from runtime.broker.keys import Keys
from runtime.envelope import QUEUE_PATTERN
from runtime.errors import InvalidRequest

_queue_name = re.compile(QUEUE_PATTERN)
MAX_POOL_QUEUES = 100
MAX_POOLS = 1_000


class QueueWeight(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    weight: int = 1


class PoolRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The extension's body in both of its spellings: `queues` as a list (with `weights` beside
    it) or as an object of queue -> {weight}."""

    name: str | None = None
    strategy: Literal["weighted", "strict", "round_robin"] = "weighted"
    queues: list[str] | dict[str, QueueWeight] = msgspec.field(default_factory=list)
    weights: dict[str, int] | None = None
    concurrency: int | None = None


class PoolDefinition(msgspec.Struct, kw_only=True):
    name: str
    strategy: str
    queues: list[str]
    weights: dict[str, int]
    concurrency: int | None = None
    updated_at: int = 0


_definition_decoder = msgspec.json.Decoder(PoolDefinition)


def definition_from(name: str, req: PoolRequest) -> PoolDefinition:
    if req.name is not None and req.name != name:
        raise InvalidRequest(f"name '{req.name}' differs from the pool in the path ('{name}').")
    if isinstance(req.queues, dict):
        weights = {q: w.weight for q, w in req.queues.items()}
    else:
        weights = {q: (req.weights or {}).get(q, 1) for q in req.queues}
        unknown = set(req.weights or {}) - set(req.queues)
        if unknown:
            raise InvalidRequest(f"weights name queues not in queues: {', '.join(sorted(unknown))}.")
    if not weights or len(weights) > MAX_POOL_QUEUES:
        raise InvalidRequest(f"queues must name 1 to {MAX_POOL_QUEUES} queues.")
    for queue, weight in weights.items():
        if len(queue) > 128 or not _queue_name.match(queue):
            raise InvalidRequest(f"Invalid queue name '{queue[:128]}'.")
        if not 1 <= weight <= fairness.MAX_WEIGHT:
            raise InvalidRequest(f"weight of '{queue}' must be between 1 and {fairness.MAX_WEIGHT}.")
    if req.concurrency is not None and not 1 <= req.concurrency <= 10_000:
        raise InvalidRequest("concurrency must be between 1 and 10000.")
    # round_robin is weighted with equal weights
    strategy = fairness.WEIGHTED if req.strategy == "round_robin" else req.strategy
    if req.strategy == "round_robin":
        weights = dict.fromkeys(weights, 1)
    return PoolDefinition(name=name, strategy=strategy, queues=list(weights), weights=weights,
                          concurrency=req.concurrency, updated_at=timefmt.now_ms())


def decode_definition(raw: bytes | None) -> PoolDefinition | None:
    if raw is None:
        return None
    try:
        return _definition_decoder.decode(raw)
    except msgspec.DecodeError:
        return None  # written by another version: ignored, as if absent


class Pools:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def put(self, definition: PoolDefinition) -> bool:
        """Store it; True when the pool had no definition before."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hlen(self.keys.pools)
            pipe.hexists(self.keys.pools, definition.name)
            size, existed = await pipe.execute()
        if not existed and size >= MAX_POOLS:
            raise InvalidRequest(f"At most {MAX_POOLS} pool definitions.")
        await self.redis.hset(self.keys.pools, definition.name, msgspec.json.encode(definition))
        return not existed

    async def definitions(self) -> dict[str, PoolDefinition]:
        raw = await self.redis.hgetall(self.keys.pools)
        out = {}
        for name, value in raw.items():
            if (found := decode_definition(value)) is not None:
                out[name.decode()] = found
        return out


def view(name: str, definition: PoolDefinition | None, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """A pool as the extension lists it: its definition (stored, else what its live workers
    were started with) and its live workers' counts."""
    live = [w for w in workers if w["state"] != "stale"]
    if definition is not None:
        queues, weights, strategy = definition.queues, definition.weights, definition.strategy
    elif live:
        queues = live[0]["queues"]
        weights = dict(zip(queues, live[0].get("weights") or [1] * len(queues), strict=False))
        strategy = live[0].get("strategy") or fairness.WEIGHTED
    else:
        queues, weights, strategy = [], {}, fairness.WEIGHTED
    concurrency = sum(w["concurrency"] or 0 for w in live)
    return {
        "name": name, "strategy": strategy, "queues": queues, "weights": weights,
        "concurrency": definition.concurrency if definition and definition.concurrency else concurrency,
        "active_workers": len(live), "active_jobs": sum(w["active_jobs"] for w in live),
        "defined": definition is not None,
    }
