"""The job store's health as the probes see it: one background PING on a connection of its own.

``/health`` and ``/ready`` read the last result instead of pinging per request, so a burst of
probes costs nothing shared (no pool checkout, no Redis command), and a burst of API requests
that holds every pool connection cannot make a probe fail. The result is at most one interval
plus one timeout old; a result older than :data:`STALE_AFTER_INTERVALS` intervals (the probe task
itself is stuck) counts as unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from redis.asyncio import ConnectionPool, Redis

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0  # a Redis that does not answer a PING in this long counts as unreachable
STALE_AFTER_INTERVALS = 3


class Reading(msgspec.Struct, frozen=True):
    reachable: bool
    latency_ms: float
    at_monotonic: float


class BackendProbe:
    def __init__(self, redis: Redis, *, interval_s: float = PROBE_INTERVAL_S,
                 timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._redis = redis  # owned: closed by stop()
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._reading = Reading(False, 0.0, time.monotonic())
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def beside(cls, redis: Redis) -> BackendProbe:
        """A probe on the same server as `redis`, through a single connection of its own."""
        pool = redis.connection_pool
        own = ConnectionPool(connection_class=pool.connection_class, max_connections=1, **pool.connection_kwargs)
        return cls(Redis(connection_pool=own))

    def reading(self) -> Reading:
        """The last result; unreachable when it is too old to speak for the present."""
        reading = self._reading
        if time.monotonic() - reading.at_monotonic > STALE_AFTER_INTERVALS * (self.interval_s + self.timeout_s):
            return Reading(False, 0.0, reading.at_monotonic)
        return reading

    async def start(self) -> None:
        """Probe once (so the first request has a result), then keep probing in the background."""
        await self._probe()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose(close_connection_pool=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._probe()

    async def _probe(self) -> None:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(self._redis.ping(), self.timeout_s)
        except Exception as err:  # any failure to answer a PING is an unreachable store
            if self._reading.reachable or self._task is None:
                # The detail (which may name the server's address) goes to the log only.
                logger.warning("job store unreachable: %s", err or type(err).__name__)
            self._reading = Reading(False, 0.0, time.monotonic())
            return
        if not self._reading.reachable and self._task is not None:
            logger.info("job store reachable again")
        self._reading = Reading(True, (time.perf_counter() - start) * 1000, time.monotonic())
