"""Queue control, dead letter operations, the event log and the worker registry."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.queue_config import view as queue_config_view
from runtime.broker.scripts import Status
from runtime.envelope import ALL_STATES
from runtime.errors import Conflict, NotFound
from runtime.metrics import QueueSample

_json = msgspec.json.Decoder()



_LAST_STREAM_ID = f"{2**64 - 1}-{2**64 - 1}"  # the greatest stream entry id there can be

class Event(msgspec.Struct, kw_only=True):
    specversion: str = "1.0"
    id: str
    type: str
    source: str
    time: str
    subject: str
    data: msgspec.Raw


def event_id(stream_id: str) -> str:
    """A UUIDv7-shaped id derived from the stream entry id (ms-seq), unique within the stream."""
    ms_text, _, seq_text = stream_id.partition("-")
    ms, seq = int(ms_text), int(seq_text or 0)
    hex_ms = f"{ms & 0xFFFFFFFFFFFF:012x}"
    return (
        f"evt_{hex_ms[:8]}-{hex_ms[8:]}-7{seq & 0xFFF:03x}-"
        f"{0x8000 | ((seq >> 12) & 0x3FFF):04x}-{(seq >> 26) & 0xFFFFFFFFFFFF:012x}"
    )


def _type_matches(etype: str, wanted: list[str]) -> bool:
    return any(etype == w or (w.endswith(".*") and etype.startswith(w[:-1])) for w in wanted)


class Admin:
    """Operations around jobs rather than on one job's lifecycle."""

    def __init__(self, broker: Broker, *, source: str = "ojs://ojs-runtime/api") -> None:
        self.broker = broker
        self.redis = broker.redis
        self.keys = broker.keys
        self.source = source

    # --- queues ----------------------------------------------------------------------------

    async def queues(self) -> list[dict[str, Any]]:
        created = await self.redis.hgetall(self.keys.queues)
        names = sorted(n.decode() for n in created)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.paused(name))
            paused = await pipe.execute()
        return [
            {"name": name, "status": "paused" if p else "active", "paused": bool(p),
             "created_at": timefmt.format_ms(int(created[name.encode()]))}
            for name, p in zip(names, paused, strict=False)
        ]

    async def queue_names(self) -> list[str]:
        return sorted(n.decode() for n in await self.redis.hkeys(self.keys.queues))

    async def state_counts(self, names: list[str], state: str) -> dict[str, int]:
        """Each named queue's number of jobs in one state, from its counters. One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.counts(name), state)
            replies = await pipe.execute()
        return {name: max(0, int(n or 0)) for name, n in zip(names, replies, strict=True)}

    async def queue_views(self, names: list[str], rates: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        """The admin view of each named queue: counts, paused, depth, rates (given, from the
        statistics history), configuration, and when its next available job was enqueued.
        Cost: two pipelined round trips, five small reads per queue."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(k.counts(name))
                pipe.get(k.paused(name))
                pipe.zrange(k.available(name), 0, 0)
                pipe.hgetall(k.config(name))
                pipe.hget(k.queues, name)
            replies = await pipe.execute()
        heads = [replies[5 * i + 2][0].decode() if replies[5 * i + 2] else None for i in range(len(names))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hget(k.job(head or "-"), "enqueued_at")
            enqueued = await pipe.execute()
        views = []
        for i, name in enumerate(names):
            raw, paused, _, config, created = replies[5 * i: 5 * i + 5]
            counts = {state.value: 0 for state in ALL_STATES}
            counts.update({s.decode(): max(0, int(v)) for s, v in raw.items() if s.decode() in counts})
            head_at = enqueued[i] if heads[i] else None
            views.append({
                "name": name,
                "state": "paused" if paused else "active",
                "status": "paused" if paused else "active",
                "paused": bool(paused),
                "counts": counts,
                "depth": counts["available"] + counts["scheduled"] + counts["retryable"] + counts["pending"],
                "throughput": rates.get(name, {"processed_per_minute": 0.0, "failed_per_minute": 0.0}),
                "configuration": queue_config_view(config),
                "oldest_available_at": timefmt.format_ms(int(head_at)) if head_at else None,
                "created_at": timefmt.format_ms(int(created)) if created else None,
            })
        return views

    async def queue_counts(self, queue: str) -> tuple[dict[str, int], bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.counts(queue))
            pipe.exists(self.keys.paused(queue))
            raw, paused = await pipe.execute()
        counts = {state.value: 0 for state in ALL_STATES}
        for state, value in raw.items():
            counts[state.decode()] = max(0, int(value))
        return counts, bool(paused)

    async def queue_samples(self, *, limit: int, now_ms: int) -> list[QueueSample]:
        """Per-queue state counts and the age of each queue's next available job (the head of
        its available set: with priorities, the next job a worker would get, not always the
        oldest one), for /metrics. At most `limit` queues, by name. Two round trips."""
        names = sorted(n.decode() for n in await self.redis.hkeys(self.keys.queues))[:limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.counts(name))
                pipe.zrange(self.keys.available(name), 0, 0)
            replies = await pipe.execute()
        heads = [head[0].decode() if head else None for head in replies[1::2]]
        async with self.redis.pipeline(transaction=False) as pipe:
            for head in heads:
                if head is not None:
                    pipe.hget(self.keys.job(head), "enqueued_at")
            enqueued = iter(await pipe.execute())
        samples = []
        for name, raw, head in zip(names, replies[0::2], heads, strict=True):
            counts = {state.value: 0 for state in ALL_STATES}
            counts.update({state.decode(): max(0, int(value)) for state, value in raw.items()})
            at = next(enqueued) if head is not None else None
            age_s = max(0.0, (now_ms - int(at)) / 1000) if at and at.isdigit() else None
            samples.append(QueueSample(queue=name, counts=counts, oldest_age_s=age_s))
        return samples

    async def set_paused(self, queue: str, paused: bool) -> None:
        k = self.keys
        await self.broker.scripts.call(
            "set_paused",
            keys=[k.paused(queue), k.queues, k.events],
            args=[str(timefmt.now_ms()), str(self.broker.settings.events_maxlen), queue, "1" if paused else "0",
                  k.notify(queue)],
        )

    # --- dead letter -----------------------------------------------------------------------

    async def dead_letter_page(self, *, queue: str | None, limit: int, offset: int) -> tuple[int, list[dict[bytes, bytes]]]:
        """Oldest first; a queue filter reads that queue's own index (one page, not the whole set)."""
        k = self.keys
        index = k.dlq if queue is None else k.queue_dlq(queue)
        total = await self.redis.zcard(index)
        ids = await self.redis.zrange(index, offset, offset + limit - 1)
        return total, await self._hashes(ids)

    async def _hashes(self, ids: list[bytes]) -> list[dict[bytes, bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id.decode()))
            return [h for h in await pipe.execute() if h]

    async def dead_letter_retry(self, job_id: str) -> None:
        k = self.keys
        reply = await self.broker.scripts.call(
            "dlq_retry", keys=[k.prefix, k.job(job_id)],
            args=[str(timefmt.now_ms()), str(self.broker.settings.events_maxlen), job_id],
        )
        status = int(reply[0])
        if status == Status.UNIQUE_CONFLICT:
            holder, state = reply[1].decode(), reply[2].decode()
            raise Conflict(
                f"Job '{job_id}' is a unique job, and job '{holder}' ({state}) holds its lock now; "
                "retry it once that job has ended.",
                details={"existing_job_id": holder, "existing_job_state": state},
            )
        if status == Status.CONFLICT:
            workflow_id = reply[1].decode()
            raise Conflict(
                f"Job '{job_id}' is a member of workflow '{workflow_id}', which is still running and "
                "has counted this job as failed; retry it once the workflow has ended.",
                details={"workflow_id": workflow_id},
            )
        if status != Status.OK:
            raise NotFound(f"Job '{job_id}' is not in the dead letter queue.")

    async def dead_letter_delete(self, job_id: str) -> None:
        k = self.keys
        reply = await self.broker.scripts.call(
            "dlq_delete", keys=[k.prefix, k.job(job_id)], args=[job_id],
        )
        if int(reply[0]) == Status.CONFLICT:
            raise Conflict(f"Job '{job_id}' is a member of workflow '{reply[1].decode()}', which is still running; "
                           "cancel the workflow or wait for it to end.")
        if int(reply[0]) != Status.OK:
            raise NotFound(f"Job '{job_id}' is not in the dead letter queue.")

    # --- events ----------------------------------------------------------------------------

    async def events(
        self, *, after: str | None, limit: int, types: list[str], queues: list[str], job_types: list[str],
    ) -> tuple[list[Event], str | None, bool]:
        """Oldest first after the cursor (a stream id), filtered; scans at most 10x the limit."""
        if after == _LAST_STREAM_ID:
            return [], after, False  # nothing can come after it (Redis refuses the range)
        start = f"({after}" if after else "-"
        entries = await self.redis.xrange(self.keys.events, min=start, max="+", count=limit * 10)
        out: list[Event] = []
        cursor = after
        for stream_id, fields in entries:
            sid = stream_id.decode()
            etype = fields[b"type"].decode()
            data = fields[b"data"]
            cursor = sid
            if types and not _type_matches(etype, types):
                continue
            if queues or job_types:
                decoded = _json.decode(data)
                if queues and decoded.get("queue") not in queues:
                    continue
                if job_types and decoded.get("job_type") not in job_types:
                    continue
            out.append(Event(
                id=event_id(sid), type=etype, source=self.source,
                time=timefmt.format_ms(int(fields[b"time"])), subject=fields[b"subject"].decode(),
                data=msgspec.Raw(data),
            ))
            if len(out) >= limit:
                break
        has_more = len(entries) == limit * 10 or len(out) >= limit
        return out, cursor, has_more

    # --- workers ---------------------------------------------------------------------------

    async def worker(self, worker_id: str) -> dict[str, str]:
        fields = await self.redis.hgetall(self.keys.worker(worker_id))
        if not fields:
            raise NotFound(f"Worker '{worker_id}' not found.")
        return {key.decode(): value.decode() for key, value in fields.items()}

    async def record_worker_state(self, worker_id: str, state: str, active_jobs: int | None) -> int:
        now = timefmt.now_ms()
        mapping: dict[str, str] = {"id": worker_id, "state": state, "last_heartbeat_at": str(now)}
        if active_jobs is not None:
            mapping["active_jobs"] = str(active_jobs)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.worker(worker_id), mapping=mapping)
            pipe.hsetnx(self.keys.worker(worker_id), "started_at", str(now))
            pipe.zadd(self.keys.workers, {worker_id: now})
            await pipe.execute()
        return now


    async def describe_worker(self, worker_id: str, info: dict[str, str]) -> None:
        """What a worker says of itself once (hostname, pid, queues, concurrency, kind), for
        the admin listing; its heartbeats keep the rest of the record current."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.worker(worker_id), mapping={"id": worker_id, **info})
            pipe.hsetnx(self.keys.worker(worker_id), "started_at", str(timefmt.now_ms()))
            await pipe.execute()

    async def workers(self, *, offset: int, limit: int, now_ms: int, stale_after_ms: int) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
        """A page of the worker registry (most recent heartbeat first) and a summary of all of
        it by state; a worker silent for `stale_after_ms` is `stale`. Cost: one ZRANGE and one
        HGETALL per worker listed; the summary reads each registered worker's state (ZSCAN-free:
        the registry holds live workers only, as dead ones are removed)."""
        total = await self.redis.zcard(self.keys.workers)
        everyone = await self.redis.zrange(self.keys.workers, 0, -1, desc=True, withscores=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, _ in everyone:
                pipe.hmget(self.keys.worker(worker_id.decode()), ["state", "heartbeat_interval_ms"])
            states = await pipe.execute()
        summary = {"total": total, "running": 0, "quiet": 0, "stale": 0}
        default_ms = self.broker.settings.worker_heartbeat_interval_ms
        for (_, beat), (state, interval) in zip(everyone, states, strict=True):
            summary[_worker_state(state, int(beat), now_ms, _stale_after(stale_after_ms, interval, default_ms))] += 1
        page = everyone[offset: offset + limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, _ in page:
                pipe.hgetall(self.keys.worker(worker_id.decode()))
            records = await pipe.execute()
        items = [_worker_view(worker_id.decode(), record, int(beat), now_ms,
                              _stale_after(stale_after_ms, record.get(b"heartbeat_interval_ms"), default_ms))
                 for (worker_id, beat), record in zip(page, records, strict=True)]
        return total, items, summary

    async def all_workers(self, *, now_ms: int, stale_after_ms: int) -> list[dict[str, Any]]:
        """Every registered worker's view (the registry holds live workers only)."""
        total = await self.redis.zcard(self.keys.workers)
        _, items, _ = await self.workers(offset=0, limit=max(1, total), now_ms=now_ms, stale_after_ms=stale_after_ms)
        return items

    async def worker_view(self, worker_id: str, *, now_ms: int, stale_after_ms: int) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.worker(worker_id))
            pipe.zscore(self.keys.workers, worker_id)
            pipe.smembers(self.keys.worker_jobs(worker_id))
            record, beat, held = await pipe.execute()
        if not record:
            raise NotFound(f"Worker '{worker_id}' not found.")
        stale_ms = _stale_after(stale_after_ms, record.get(b"heartbeat_interval_ms"),
                                self.broker.settings.worker_heartbeat_interval_ms)
        view = _worker_view(worker_id, record, int(beat or 0), now_ms, stale_ms)
        view["job_ids"] = sorted(j.decode() for j in held)
        return view

    async def set_directive(self, worker_id: str, directive: str) -> None:
        if not await self.redis.exists(self.keys.worker(worker_id)):
            raise NotFound(f"Worker '{worker_id}' not found.")
        await self.redis.hset(self.keys.worker(worker_id), "directive", directive)

    # --- maintenance -----------------------------------------------------------------------

    async def maintenance(self) -> dict[str, Any]:
        record = await self.redis.hgetall(self.keys.maintenance)
        if not record:
            return {"maintenance": False, "enabled": False, "reason": None, "enabled_at": None}
        return {"maintenance": True, "enabled": True, "reason": record.get(b"reason", b"").decode() or None,
                "enabled_at": timefmt.format_ms(int(record[b"enabled_at"]))}

    async def set_maintenance(self, enabled: bool, reason: str | None) -> dict[str, Any]:
        if enabled:
            await self.redis.hset(self.keys.maintenance, mapping={
                "enabled_at": str(timefmt.now_ms()), "reason": reason or ""})
        else:
            await self.redis.delete(self.keys.maintenance)
        return await self.maintenance()


def _stale_after(stale_after_ms: int, interval: bytes | None, default_interval_ms: int) -> int:
    """`stale_after_ms` is a number of the server's heartbeat intervals; a worker that beats
    less often (it said so in its heartbeats) is stale after as many of its own intervals, as
    the dead-worker detection counts them."""
    own = int(interval) if interval and interval.isdigit() else 0
    if own <= default_interval_ms:
        return stale_after_ms
    return stale_after_ms * own // max(1, default_interval_ms)


def _worker_state(state: bytes | None, beat_ms: int, now_ms: int, stale_after_ms: int) -> str:
    if now_ms - beat_ms > stale_after_ms:
        return "stale"
    text = (state or b"running").decode()
    return "quiet" if text in ("quiet", "drain", "draining", "terminate", "shutting_down") else "running"


def _worker_view(worker_id: str, record: dict[bytes, bytes], beat_ms: int, now_ms: int, stale_after_ms: int) -> dict[str, Any]:
    get = record.get
    queues = get(b"queues")
    view: dict[str, Any] = {
        "id": worker_id,
        "kind": (get(b"kind") or b"http").decode(),
        "hostname": get(b"hostname", b"").decode() or None,
        "pid": int(get(b"pid", b"0")) or None,
        "state": _worker_state(get(b"state"), beat_ms, now_ms, stale_after_ms),
        "reported_state": (get(b"state") or b"running").decode(),
        "queues": queues.decode().split(",") if queues else [],
        "concurrency": int(get(b"concurrency", b"0")) or None,
        "active_jobs": int(get(b"active_jobs", b"0")),
        "directive": get(b"directive", b"").decode() or None,
        "pool": get(b"pool", b"").decode() or None,
        "weights": [int(w) for w in get(b"weights", b"").decode().split(",") if w.isdigit()],
        "strategy": get(b"strategy", b"").decode() or None,
        "last_heartbeat_at": timefmt.format_ms(beat_ms) if beat_ms else None,
    }
    if (started := get(b"started_at")) is not None:
        view["started_at"] = timefmt.format_ms(int(started))
    return view
