"""A pool process's place in its pool (the fair-scheduling extension's pools, runtime.broker.pools):
it registers what it serves under the pool's name once, and at each heartbeat reads the pool's
stored definition, so an operator's weights and strategy reach a running pool within a beat."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from runtime import fairness
from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.pools import decode_definition


class PoolMembership:
    def __init__(self, broker: Broker, *, worker_id: str, pool: str, queues: Sequence[str],
                 weights: Sequence[int], strategy: str, concurrency: int) -> None:
        self.broker = broker
        self.worker_id = worker_id
        self.pool = pool
        self.queues = list(queues)
        self.started_with = (list(weights), strategy)  # back to these when the definition goes
        self.concurrency = concurrency
        self.seen: bytes | None = None

    async def refresh(self) -> tuple[list[int], str] | None:
        """Register (once), then read the pool's definition: the weights and strategy to use
        from now on when they changed since the last call, else None. Raises what Redis raises."""
        async with self.broker.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.broker.keys.pools, self.pool)
            pipe.hexists(self.broker.keys.worker(self.worker_id), "pool")
            raw, described = await pipe.execute()
        if not described:  # first beat, or the record was removed (found silent) and made anew
            await Admin(self.broker).describe_worker(self.worker_id, {
                "kind": "pool", "pool": self.pool, "hostname": socket.gethostname(), "pid": str(os.getpid()),
                "queues": ",".join(self.queues), "weights": ",".join(map(str, self.started_with[0])),
                "strategy": self.started_with[1], "concurrency": str(self.concurrency),
            })
            self.seen = None  # and the definition is written into the new record again
        if raw == self.seen:
            return None
        self.seen = raw
        definition = decode_definition(raw)
        if definition is None:
            weights, strategy = self.started_with
        else:
            weights = [definition.weights.get(q, w) for q, w in zip(self.queues, self.started_with[0], strict=True)]
            strategy = definition.strategy if definition.strategy in fairness.STRATEGIES else fairness.WEIGHTED
        # What the registry shows is what the pool uses.
        await self.broker.redis.hset(self.broker.keys.worker(self.worker_id),
                                     mapping={"weights": ",".join(map(str, weights)), "strategy": strategy})
        return weights, strategy
