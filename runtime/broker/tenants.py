"""Multi-tenancy (the multi-tenancy extension): tenant ids, fair selection, per-tenant stats.

A job belongs to a tenant when its enqueue carried one (the ``X-OJS-Tenant`` header or
``meta.tenant_id``); the job hash keeps it as ``tenant``. The model is the shared queue with
tenant tags (the spec's 6.2): tenants share queues and workers, and

- **isolation**: a request that names a tenant sees, cancels and claims only that tenant's jobs
  (another tenant's job is "not found"; fetch.lua passes over it);
- **fairness**: within one queue and priority, tenants take turns. enqueue.lua gives a tenant's
  available job a start-time fair-queuing tag in place of the global enqueue sequence (lib.lua
  ``next_tag``): the tag is one past the later of the band's head and the tenant's previous tag,
  so a backlog of 10,000 jobs holds tags far ahead while a tenant arriving later starts at the
  head, and their jobs interleave. The claim itself is unchanged (it pops the set's head), so a
  fetch pays nothing for it. Retries, requeues and promotions are tagged again, as new arrivals.
  Jobs without a tenant keep the global sequence.
- **stats**: counted by the transitions themselves: ``total_jobs`` at enqueue, the set of the
  tenant's unfinished jobs (removed by every way into a terminal state, like ``rl-jobs``), from
  which the per-state counts are read.

Redis (``P`` the prefix; a tenant id matches ``^[a-zA-Z0-9][a-zA-Z0-9._:-]*$``):

=============================  =====  =============================================================
``P tenants``                  zset   tenant -> last enqueue (ms): the listing
``P tenant:<t>``               hash   total_jobs (every job ever enqueued for the tenant);
                                      completed, discarded, cancelled (each time one of its
                                      jobs reached that state: a job retried from the dead
                                      letter queue that ends again counts again)
``P tenant-jobs:<t>``          set    ids of the tenant's unfinished jobs
``P queue:<q>:tenant-tags``    hash   ``<priority>|<tenant>`` -> the tenant's last tag in that band,
                                      ``*<priority>`` -> the band's highest tag (where a tenant
                                      starts when the band is empty); one field per tenant and
                                      band used, no expiry
=============================  =====  =============================================================

Limits of the approximation: the band's head stands for "now". A job that stays at the head
(held by its rate limit, or the queue is paused) keeps it from advancing; tenants already queued
keep interleaving, but one that returns after a pause may catch up on turns it missed. Jobs
without a tenant in a queue that also has tenants' jobs are ordered by the global sequence, so
they are served like one more tenant whose turns follow the enqueues of every queue.
"""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from runtime.broker.keys import Keys
from runtime.errors import InvalidRequest

TENANT_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:-]*$")
MAX_TENANT_LENGTH = 128
LIVE_STATES = ("available", "active", "scheduled", "retryable", "pending", "waiting")
ENDED_STATES = ("completed", "discarded", "cancelled")
_READ_BATCH = 1_000


def checked_tenant(value: Any, source: str) -> str:
    """A tenant id as given (header or meta.tenant_id), or a 400 that says what is accepted."""
    if not isinstance(value, str) or len(value) > MAX_TENANT_LENGTH or not TENANT_PATTERN.match(value):
        raise InvalidRequest(
            f"{source} must be a tenant id: 1 to {MAX_TENANT_LENGTH} characters of letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit.",
            details={"field": source},
        )
    return value


class Tenants:
    """Reads of the per-tenant records that the scripts keep."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def listing(self, *, limit: int, offset: int) -> tuple[int, list[str]]:
        """(number of tenants, one page of their ids, the most recently active first)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.tenants)
            pipe.zrevrange(self.keys.tenants, offset, offset + limit - 1)
            total, names = await pipe.execute()
        return int(total), [n.decode() for n in names]

    async def stats(self, tenant_id: str, *, queue: str | None = None) -> dict[str, Any] | None:
        """The tenant's job counts, None when no job was ever enqueued for it. With `queue`,
        only its jobs in that queue are counted by state (total_jobs stays the tenant's total)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.keys.tenants, tenant_id)
            pipe.hmget(self.keys.tenant(tenant_id), ["total_jobs", *ENDED_STATES])
            pipe.smembers(self.keys.tenant_jobs(tenant_id))
            seen, totals, members = await pipe.execute()
        if seen is None:
            return None
        counts = await self._states([m.decode() for m in members], queue)
        return {
            "tenant_id": tenant_id,
            "total_jobs": int(totals[0] or 0),
            "unfinished_jobs": sum(counts.values()),
            "jobs": counts,
            "ended": {state: int(n or 0) for state, n in zip(ENDED_STATES, totals[1:], strict=True)},
            "last_enqueued_at_ms": int(seen),
        }

    async def _states(self, job_ids: list[str], queue: str | None) -> dict[str, int]:
        counts = dict.fromkeys(LIVE_STATES, 0)
        for start in range(0, len(job_ids), _READ_BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids[start : start + _READ_BATCH]:
                    pipe.hmget(self.keys.job(job_id), ["state", "queue"])
                rows = await pipe.execute()
            for state, job_queue in rows:
                if state is None or (queue is not None and (job_queue or b"").decode() != queue):
                    continue
                name = state.decode()
                if name in counts:
                    counts[name] += 1
        return counts

    async def owner(self, job_id: str) -> str | None:
        """The tenant a job belongs to (None: none, or no such job)."""
        value = await self.redis.hget(self.keys.job(job_id), "tenant")
        return value.decode() if value is not None else None

    async def owners(self, job_ids: list[str]) -> list[str | None]:
        """:meth:`owner` of each job, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "tenant")
            values = await pipe.execute()
        return [value.decode() if value is not None else None for value in values]
