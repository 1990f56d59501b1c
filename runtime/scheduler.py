"""The broker's background loops: the scheduler step (promotion, expiry, lease and timeout
reaping, dead-worker detection), cron firing and the statistics rollup. Both are safe to run in every server process at once: each step is
atomic in Redis, and a cron tick is claimed by exactly one firing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from runtime.broker import BACKEND_ERRORS
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.dead_workers import SilentWorkers
from runtime.broker.migrations import MIGRATIONS, JobScanMigration
from runtime.broker.stats_history import StatsHistory
from runtime.config import Settings

logger = logging.getLogger(__name__)

MAX_ERROR_BACKOFF_S = 5.0


class Scheduler:
    def __init__(self, broker: Broker, crons: Crons, settings: Settings, history: StatsHistory | None = None) -> None:
        self.broker = broker
        self.crons = crons
        self.history = history
        self.settings = settings
        self.silent_workers = SilentWorkers(broker)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop("scheduler", self._scheduler_step, self.settings.scheduler_interval_ms)),
            asyncio.create_task(self._loop("cron", self.crons.tick, self.settings.cron_interval_ms)),
        ]
        if self.history is not None:
            self._tasks.append(asyncio.create_task(
                self._loop("stats", self.history.rollup, self.settings.stats_rollup_interval_ms)))
        self._tasks.append(asyncio.create_task(self._migrate()))

    async def _migrate(self) -> None:
        """The store upgrades, once, in the background (retried while Redis is away)."""
        for kind in MIGRATIONS:
            await self._migrate_one(kind(self.broker))

    async def _migrate_one(self, migration: JobScanMigration) -> None:
        delay_s = 1.0
        while True:
            try:
                await migration.run()
                return
            except BACKEND_ERRORS as err:
                logger.warning("store upgrade %s waits for the job store (%s)", migration.NAME, err)
            except Exception:
                logger.exception("store upgrade %s failed; retrying", migration.NAME)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 60.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _scheduler_step(self) -> int:
        handled = await self.broker.scheduler_step()
        return handled + await self.silent_workers.step()

    async def _loop(self, name: str, step: Callable[[], Awaitable[int]], interval_ms: int) -> None:
        interval_s = interval_ms / 1000
        backoff_s = interval_s
        # Below half the outage gap: a step that keeps failing for a reason of its own must not
        # space the steps so far apart that every one looks like an outage (runtime.broker.outage),
        # which would suspend lease expiry for good.
        max_backoff_s = max(interval_s, min(MAX_ERROR_BACKOFF_S, self.settings.reaper_outage_gap_ms / 2000))
        while True:
            try:
                await step()
                backoff_s = interval_s
            except BACKEND_ERRORS as err:
                # Redis is down: keep trying, slower, without flooding the log.
                logger.warning("%s loop: job store unavailable (%s); retrying in %.1fs", name, err, backoff_s)
                backoff_s = min(backoff_s * 2, max_backoff_s)
            except Exception:
                logger.exception("%s loop: step failed", name)
                backoff_s = min(backoff_s * 2, max_backoff_s)
            await asyncio.sleep(backoff_s)
