"""One-time, resumable upgrades of a store written by an earlier version, run by the scheduler.

* ``ended-index``: index the ended jobs stored before the ended-job indexes existed
  (reindex_ended.lua). Until it has run, listings, purges and bulk actions do not see those jobs.
  It SCANs the job hashes in batches (never KEYS), records its SCAN cursor after each batch so a
  restart continues where it stopped, and marks itself done; several servers may run it at once
  (each step is idempotent).
"""

from __future__ import annotations

import logging

from runtime.broker.core import Broker

logger = logging.getLogger(__name__)

BATCH = 500


class EndedIndexMigration:
    NAME = "ended-index"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.keys = broker.keys

    async def run(self) -> int:
        """Run to the end (or continue an interrupted run); returns the jobs indexed."""
        redis = self.broker.redis
        if await redis.hget(self.keys.migrations, self.NAME) == b"done":
            return 0
        cursor = int(await redis.hget(self.keys.migrations, f"{self.NAME}:cursor") or 0)
        prefix = self.keys.job("")
        match = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        added = 0
        while True:
            cursor, found = await redis.scan(cursor=cursor, match=match, count=BATCH)
            ids = [key.decode()[len(prefix):] for key in found]
            if ids:
                added += int(await self.broker.scripts.call("reindex_ended", keys=[self.keys.prefix], args=ids))
            if cursor == 0:
                break
            await redis.hset(self.keys.migrations, f"{self.NAME}:cursor", str(cursor))
        await redis.hset(self.keys.migrations, mapping={self.NAME: "done", f"{self.NAME}:cursor": "0"})
        if added:
            logger.info("indexed %d ended job(s) stored by an earlier version", added)
        return added
