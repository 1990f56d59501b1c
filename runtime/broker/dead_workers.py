"""Dead-worker detection (worker protocol, section 10), run from every server's scheduler loop.

A worker that registered by heartbeat (HTTP workers, and ``ojs-run`` pools) and then went silent
would keep its jobs for their whole lease (30 minutes by default) and its registry entry for
ever. After ``worker_missed_heartbeats`` intervals without a beat (the interval being the longer
of the worker's own, reported in its heartbeats, and ``worker_heartbeat_interval_ms``) its
entry is removed and its jobs are requeued as a worker loss.

Safe with several servers: ``silent_workers.lua`` removes the entry in the same step that lists
the jobs, so one silence is acted on once, and each job's failure is guarded by its claim's
fencing token, so a job acked or claimed again in between is left alone.

What the worker was doing with each job is not known, so the loss is charged as a pool death's
would be without a run record (:func:`runtime.broker.pool_ops.death_verdicts`): a worker that
held one job is charged that loss; one that held several charges none of them, and each runs
alone next (a suspect), so a poison job cannot dead-letter its neighbours this way either.

A server that could not reach Redis for a while counts silence only from when it reached it
again: workers could not beat meanwhile either, and deserve a full threshold to do so.
"""

from __future__ import annotations

import logging
import time

from runtime import metrics, timefmt
from runtime.broker import failures
from runtime.broker.core import Broker, Failure

logger = logging.getLogger(__name__)


class SilentWorkers:
    """One server's detector; :meth:`step` is called from the scheduler loop."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._reached_at: float | None = None  # monotonic end of the last step that reached Redis
        self._since_ms = 0

    async def step(self) -> int:
        """Requeue the jobs of the workers found silent now; returns how many were requeued."""
        settings = self.broker.settings
        missed, interval_ms = settings.worker_missed_heartbeats, settings.worker_heartbeat_interval_ms
        if missed <= 0:
            return 0
        now = timefmt.now_ms()
        if self._reached_at is None or time.monotonic() - self._reached_at > interval_ms / 1000:
            self._since_ms = now  # (re)gained the store: every worker gets a full threshold from here
        k = self.broker.keys
        reply = await self.broker.scripts.call(
            "silent_workers", keys=[k.prefix, k.workers],
            args=[str(now), str(self._since_ms), str(missed), str(interval_ms), str(settings.scheduler_step_limit)],
        )
        self._reached_at = time.monotonic()
        return await self._requeue(reply, now)

    async def deregister(self, worker_id: str, *, missed: int) -> int | None:
        """An operator's removal of one stale worker: silent for `missed` heartbeat intervals
        (its own, at least the server's). Its jobs are requeued as on its detected death.
        Returns how many were requeued, or None when the worker is not that silent."""
        settings = self.broker.settings
        now = timefmt.now_ms()
        k = self.broker.keys
        # After an outage every worker gets its threshold afresh from Redis' return, as with the
        # automatic detection: it could not beat while Redis was away.
        resume_at = int(await self.broker.redis.hget(k.reaper, "resume_at_ms") or 0)
        since = max(0, resume_at - settings.reaper_outage_grace_ms)
        reply = await self.broker.scripts.call(
            "silent_workers", keys=[k.prefix, k.workers],
            args=[str(now), str(since), str(missed), str(settings.worker_heartbeat_interval_ms), "1", worker_id],
        )
        if not reply:
            return None
        return await self._requeue(reply, now)

    async def _requeue(self, reply: list, now: int) -> int:  # type: ignore[type-arg]
        items: list[Failure] = []
        for worker_raw, held in zip(reply[0::2], reply[1::2], strict=True):
            worker_id = worker_raw.decode()
            error = failures.server_error(
                "worker_death", "worker_death", "The worker stopped sending heartbeats while holding the job", now,
            )
            jobs = [(job.decode(), int(attempt), claim.decode())
                    for job, attempt, claim in zip(held[0::3], held[1::3], held[2::3], strict=True)]
            logger.warning("worker %s stopped sending heartbeats: removed, requeueing %d job(s)", worker_id, len(jobs))
            verdict = "worker_lost" if len(jobs) == 1 else "worker_lost_shared"
            items += [Failure(job_id=job_id, verdict=verdict, error=error, worker_id=worker_id, attempt=attempt,
                              claim=claim)
                      for job_id, attempt, claim in jobs]
        if not items:
            return 0
        results = await self.broker.fail_many(items, now_ms=now)
        taken = sum(not isinstance(r, Exception) for r in results)
        metrics.JOBS_RECOVERED.labels("worker_lost").inc(taken)
        await self.broker.count_failures(items, results)
        return taken
