"""One-time, resumable upgrades of a store written by an earlier version, run by the scheduler.

* ``ended-index``: index the ended jobs stored before the ended-job indexes existed
  (reindex_ended.lua). Until it has run, listings, purges and bulk actions do not see those jobs.
* ``retry-defaults``: rewrite the job hashes that hold any part of the default retry policy (its
  display, or a scalar at its default: every job stored before a hash kept only what differs
  from the defaults) to the current, smaller layout (compact_jobs.lua). Those jobs read the same
  before and after; it only gives back their memory. It follows ``retry-layout``, which left the
  scalars, so a store that ran that one runs this one too.

Each SCANs the job hashes in batches (never KEYS), records its SCAN cursor after each batch so a
restart continues where it stopped, and marks itself done; several servers may run one at once
(each step is idempotent). A SCAN cursor only means a place in the keyspace of the server that
gave it: after a Redis restart, a failover or a reshard it may skip keys. So a run that resumed
from a recorded cursor makes one full pass more before it marks itself done.
"""

from __future__ import annotations

import logging

from runtime.broker.core import Broker
from runtime.broker.records import DEFAULT_RETRY_DISPLAY

logger = logging.getLogger(__name__)

BATCH = 500


class JobScanMigration:
    """A script applied to every job hash, a SCAN batch per call (subclasses name both)."""

    NAME = ""
    SCRIPT = ""
    DONE_LOG = "%d job(s) upgraded"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.keys = broker.keys

    def script_args(self, ids: list[str]) -> list[str | bytes]:
        return list(ids)

    async def run(self) -> int:
        """Run to the end (or continue an interrupted run); returns the jobs changed."""
        redis = self.broker.redis
        if await redis.hget(self.keys.migrations, self.NAME) == b"done":
            return 0
        cursor = int(await redis.hget(self.keys.migrations, f"{self.NAME}:cursor") or 0)
        resumed = cursor != 0  # a cursor from another run: perhaps of another server's keyspace
        prefix = self.keys.job("")
        match = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        changed = 0
        while True:
            cursor, found = await redis.scan(cursor=cursor, match=match, count=BATCH)
            ids = [key.decode()[len(prefix):] for key in found]
            if ids:
                changed += int(await self.broker.scripts.call(self.SCRIPT, keys=[self.keys.prefix],
                                                              args=self.script_args(ids)))
            if cursor == 0 and resumed:
                resumed = False  # the full pass that covers whatever the recorded cursor skipped
                continue
            if cursor == 0:
                break
            await redis.hset(self.keys.migrations, f"{self.NAME}:cursor", str(cursor))
        await redis.hset(self.keys.migrations, mapping={self.NAME: "done", f"{self.NAME}:cursor": "0"})
        if changed:
            logger.info(self.DONE_LOG, changed)
        return changed


class EndedIndexMigration(JobScanMigration):
    NAME = "ended-index"
    SCRIPT = "reindex_ended"
    DONE_LOG = "indexed %d ended job(s) stored by an earlier version"


class RetryLayoutMigration(JobScanMigration):
    NAME = "retry-defaults"
    SCRIPT = "compact_jobs"
    DONE_LOG = "rewrote %d job hash(es) stored with a copy of the default retry policy"

    def script_args(self, ids: list[str]) -> list[str | bytes]:
        return [DEFAULT_RETRY_DISPLAY, *ids]


MIGRATIONS: tuple[type[JobScanMigration], ...] = (EndedIndexMigration, RetryLayoutMigration)
