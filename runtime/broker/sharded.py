"""The job operations of a namespace split into shards (:mod:`runtime.broker.shards`): one
:class:`~runtime.broker.core.Broker` per shard, and this router over them.

Each transition still runs as one script in one shard. What a call names decides where it goes:
- a new job goes to the shard of its placement key; the ids this router makes hash to it;
- a job id goes to the shard it hashes to, else (a client-chosen id placed by its queue, say)
  to the one shard that holds it, found in one round to every shard;
- a fetch fills its count from the shards in turn, starting at a different shard each call, so
  that no shard's jobs wait behind another's;
- the scheduler step runs in every shard.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from runtime.broker.core import (
    AckResult,
    Broker,
    Completion,
    Enqueued,
    EnqueuedJobs,
    Failure,
    HeartbeatResult,
    NackResult,
    Progress,
)
from runtime.broker.records import NewJob
from runtime.broker.shards import id_in, placement_key, shard_of
from runtime.config import Settings
from runtime.envelope import ErrorInfo
from runtime.errors import NotFound

if TYPE_CHECKING:
    from runtime.broker.workflows import Workflows

T = TypeVar("T")
# A directive of any shard's worker entry stands: the strongest wins.
_DIRECTIVE_RANK = {"running": 0, "": 0, "quiet": 1, "terminate": 2}


def job_placement(job: NewJob, *, workflow_id: str | None = None, cron_name: str | None = None) -> str:
    return placement_key(
        queue=job.queue, workflow_id=workflow_id, cron_name=cron_name,
        unique_fingerprint=job.unique.fingerprint if job.unique is not None else None,
        rate_limit_key=job.fields.get("rl_key"),
    )


def place(job: NewJob, shard: int, count: int) -> None:
    """Give a job the runtime made an id of `shard` (a client's own id stays as it is)."""
    if job.client_id or shard_of(job.id, count) == shard:
        return
    job.id = id_in(shard, count)
    if "id" in job.fields:
        job.fields["id"] = job.id


class ShardedBroker:
    """The operations of :class:`~runtime.broker.core.Broker` that name jobs, routed over the
    shards; ``shards[i]`` is shard i's own broker, for what is done shard by shard."""

    def __init__(self, shards: Sequence[Broker], settings: Settings) -> None:
        if len(shards) < 2:
            raise ValueError("a sharded namespace has two shards or more")
        self.shards = list(shards)
        self.settings = settings
        self.count = len(self.shards)
        self._turn = itertools.count()

    # --- where a job is --------------------------------------------------------------------

    def shard_for(self, key: str) -> Broker:
        return self.shards[shard_of(key, self.count)]

    async def locate(self, job_ids: Sequence[str]) -> list[int | None]:
        """The shard of each id, None where no shard has it: one round to the shards the ids
        hash to, and one more to every shard for the ids not found there."""
        guesses = [shard_of(job_id, self.count) for job_id in job_ids]
        found = await self._exists(list(zip(job_ids, guesses, strict=True)))
        out: list[int | None] = [g if hit else None for g, hit in zip(guesses, found, strict=True)]
        missing = [n for n, shard in enumerate(out) if shard is None]
        if missing:
            asked = [(n, s) for n in missing for s in range(self.count) if s != guesses[n]]
            hits = await self._exists([(job_ids[n], s) for n, s in asked])
            for (n, shard), hit in zip(asked, hits, strict=True):
                if hit:
                    out[n] = shard
        return out

    async def _exists(self, probes: Sequence[tuple[str, int]]) -> list[bool]:
        by_shard: dict[int, list[int]] = {}
        for n, (_job_id, shard) in enumerate(probes):
            by_shard.setdefault(shard, []).append(n)

        async def one(shard: int, rows: list[int]) -> list[Any]:
            broker = self.shards[shard]
            async with broker.redis.pipeline(transaction=False) as pipe:
                for n in rows:
                    pipe.exists(broker.keys.job(probes[n][0]))
                return list(await pipe.execute())

        replies = await asyncio.gather(*(one(s, rows) for s, rows in by_shard.items()))
        out = [False] * len(probes)
        for rows, reply in zip(by_shard.values(), replies, strict=True):
            for n, hit in zip(rows, reply, strict=True):
                out[n] = bool(hit)
        return out

    async def _home(self, job_id: str) -> Broker:
        (shard,) = await self.locate([job_id])
        if shard is None:
            raise NotFound(f"Job '{job_id}' not found.")
        return self.shards[shard]

    async def _per_shard(self, job_ids: Sequence[str], items: Sequence[T], call: Any,
                         missing: Any) -> list[Any]:
        """`call(broker, items of that shard)` in every shard that holds some, at once; each
        item's own answer in the order given (`missing(id)` for an id no shard has)."""
        shards = await self.locate(job_ids)
        groups: dict[int, list[int]] = {}
        out: list[Any] = [None] * len(items)
        for n, shard in enumerate(shards):
            if shard is None:
                out[n] = missing(job_ids[n])
            else:
                groups.setdefault(shard, []).append(n)
        replies = await asyncio.gather(*(call(self.shards[s], [items[n] for n in rows]) for s, rows in groups.items()))
        for rows, reply in zip(groups.values(), replies, strict=True):
            for n, answer in zip(rows, reply, strict=True):
                out[n] = answer
        return out

    # --- enqueue ---------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob], *, now_ms: int) -> EnqueuedJobs:
        """A call whose jobs share a shard is one script there, all or nothing as on one shard.
        Jobs of several shards go in one script per shard, shard by shard: a refusal in one
        (a duplicate id, a unique conflict, a full queue) leaves the shards before it done.
        (A workflow's jobs are enqueued by its shard's own broker: ShardedWorkflows.)"""
        groups: dict[int, list[int]] = {}
        for n, job in enumerate(jobs):
            shard = shard_of(job_placement(job), self.count)
            place(job, shard, self.count)
            groups.setdefault(shard, []).append(n)
        if len(groups) == 1:
            ((shard, _rows),) = groups.items()
            return await self.shards[shard].enqueue(jobs, now_ms=now_ms)
        answers: list[Enqueued | None] = [None] * len(jobs)
        out = EnqueuedJobs()
        for shard, rows in groups.items():
            part = await self.shards[shard].enqueue([jobs[n] for n in rows], now_ms=now_ms)
            for n, answer in zip(rows, part, strict=True):
                answers[n] = answer
            if part.pressure is not None and (out.pressure is None or part.pressure.depth > out.pressure.depth):
                out.pressure = part.pressure
        out.extend(a for a in answers if a is not None)
        return out

    async def enqueue_cron_tick(self, job: NewJob, *, cron_name: str, **kwargs: Any) -> tuple[str, str | None, str | None]:
        shard = shard_of(job_placement(job, cron_name=cron_name), self.count)
        place(job, shard, self.count)
        return await self.shards[shard].enqueue_cron_tick(job, cron_name=cron_name, **kwargs)

    # --- reads and changes of one job ------------------------------------------------------

    async def get(self, job_id: str) -> dict[bytes, bytes]:
        return await (await self._home(job_id)).get(job_id)

    async def cancel(self, job_id: str) -> str:
        return await (await self._home(job_id)).cancel(job_id)

    async def cancel_many(self, job_ids: Sequence[str]) -> list[str | Exception]:
        return await self._per_shard(job_ids, job_ids, lambda b, ids: b.cancel_many(ids), _not_found)

    async def progress(self, job_id: str, **kwargs: Any) -> Progress:
        return await (await self._home(job_id)).progress(job_id, **kwargs)

    async def read_progress(self, job_id: str) -> Progress:
        return await (await self._home(job_id)).read_progress(job_id)

    # --- worker protocol -------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], *, count: int = 1, **kwargs: Any) -> list[dict[bytes, bytes]]:
        """Up to `count` jobs, from the shards in turn (a different one first at each call)."""
        first = next(self._turn) % self.count
        claimed: list[dict[bytes, bytes]] = []
        for step in range(self.count):
            broker = self.shards[(first + step) % self.count]
            claimed += await broker.fetch(queues, count=count - len(claimed), **kwargs)
            if len(claimed) >= count:
                break
        return claimed

    async def ack(self, job_id: str, result: bytes | None = None, **kwargs: Any) -> AckResult:
        return await (await self._home(job_id)).ack(job_id, result, **kwargs)

    async def ack_many(self, items: Sequence[Completion]) -> list[AckResult | Exception]:
        return await self._per_shard([i.job_id for i in items], items, lambda b, part: b.ack_many(part), _not_found)

    async def nack(self, job_id: str, error: ErrorInfo | None, **kwargs: Any) -> NackResult:
        return await (await self._home(job_id)).nack(job_id, error, **kwargs)

    async def fail_many(self, items: Sequence[Failure], *, now_ms: int) -> list[NackResult | Exception]:
        return await self._per_shard([i.job_id for i in items], items,
                                     lambda b, part: b.fail_many(part, now_ms=now_ms), _not_found)

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str], *, claims: Sequence[str] | None = None,
                        **kwargs: Any) -> HeartbeatResult:
        """A beat in every shard (each keeps its own entry of the worker, which its dead-worker
        check reads), each extending the leases of the worker's jobs there."""
        shards = await self.locate(job_ids) if job_ids else []
        parts: list[tuple[list[str], list[str]]] = [([], []) for _ in self.shards]
        for n, shard in enumerate(shards):
            if shard is not None:
                parts[shard][0].append(job_ids[n])
                parts[shard][1].append(claims[n] if claims is not None else "")
        beats = await asyncio.gather(*(
            broker.heartbeat(worker_id, ids, claims=tokens if claims is not None else None, **kwargs)
            for broker, (ids, tokens) in zip(self.shards, parts, strict=True)))
        directive = max((b.directive for b in beats), key=lambda d: _DIRECTIVE_RANK.get(d, 1))
        extended = [x for b in beats for x in b.extended]
        cancelled = [x for b in beats for x in b.cancelled]
        # An id no shard has is neither extended nor cancelled, as on one shard.
        return HeartbeatResult(directive, extended, cancelled)

    # --- background ------------------------------------------------------------------------

    async def scheduler_step(self) -> int:
        return sum(await asyncio.gather(*(b.scheduler_step() for b in self.shards)))

    async def advance_workflows(self) -> int:
        return sum(await asyncio.gather(*(b.advance_workflows() for b in self.shards)))

    async def close(self) -> None:
        for broker in self.shards:
            await broker.close()

    async def ping_ms(self) -> float:
        return max(await asyncio.gather(*(b.ping_ms() for b in self.shards)))


def _not_found(job_id: str) -> Exception:
    return NotFound(f"Job '{job_id}' not found.")


class ShardedWorkflows:
    """Workflows of a sharded namespace: each one wholly in one shard, which its id names; a new
    one goes to the shards in turn."""

    def __init__(self, broker: ShardedBroker) -> None:
        from runtime.broker.workflows import Workflows  # it imports core, as this module does

        count = broker.count
        self.shards = [Workflows(b, new_id=functools.partial(id_in, i, count)) for i, b in enumerate(broker.shards)]
        self._count = count
        self._turn = itertools.count()

    def of(self, workflow_id: str) -> Workflows:
        return self.shards[shard_of(workflow_id, self._count)]

    async def create(self, req: Any, *, tenant: str | None = None) -> dict[str, Any]:
        return await self.shards[next(self._turn) % self._count].create(req, tenant=tenant)

    async def get(self, workflow_id: str) -> dict[str, Any]:
        return await self.of(workflow_id).get(workflow_id)

    async def first_member(self, workflow_id: str) -> str | None:
        return await self.of(workflow_id).first_member(workflow_id)

    async def cancel(self, workflow_id: str, **kwargs: Any) -> Any:
        return await self.of(workflow_id).cancel(workflow_id, **kwargs)
