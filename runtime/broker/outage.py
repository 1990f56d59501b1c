"""Lease expiry after an outage: give live pools the chance to renew before judging their leases.

While Redis is away (down, restarting, stalled) no pool can heartbeat, and a pool that cannot reach
Redis keeps its jobs running. A lease that ran out during the outage therefore says nothing about
its pool; expiring it at once would run every such job a second time. reaper_watch.lua notices the
outage as a gap between reaper steps, measured on Redis' own clock in a key every reaper shares
(the reaper may run in other processes than the pools, and on several servers with skewed clocks),
and lease expiry then waits one grace period from Redis' return. A pool that does not come back
within it is reaped as before.
"""

from __future__ import annotations

import logging

from runtime import metrics
from runtime.broker.keys import Keys
from runtime.broker.scripts import Scripts
from runtime.config import Settings

logger = logging.getLogger(__name__)


class LeaseExpiryGuard:
    """Asked once per scheduler step, before it judges any lease."""

    def __init__(self, scripts: Scripts, keys: Keys, settings: Settings) -> None:
        self._scripts = scripts
        self._key = keys.reaper
        self._args = [str(settings.reaper_outage_gap_ms), str(settings.reaper_outage_grace_ms)]

    async def expiry_allowed(self) -> bool:
        wait_ms, gap_ms = await self._scripts.call("reaper_watch", keys=[self._key], args=self._args)
        if gap_ms:
            outage = gap_ms > 0
            metrics.LEASE_EXPIRY_DEFERRALS.labels("outage" if outage else "clock_back").inc()
            what = "no scheduler step reached the job store for" if outage else "the job store's clock went back by"
            logger.warning(
                "%s %.1f s: lease expiry waits %.1f s so that live workers can renew their leases first",
                what, abs(gap_ms) / 1000, wait_ms / 1000,
            )
        return not wait_ms
