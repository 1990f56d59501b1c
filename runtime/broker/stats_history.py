"""The statistics history: per-minute and per-hour counts of what happened to jobs, per queue.

The transitions count as they run (lib.lua ``count_stat``: one HINCRBY per script call and queue,
no round trip of its own) into a hash per minute; the scheduler's rollup adds each closed minute
into its hour's hash and sets both retentions (minutes 24 h, hours 30 days by default), so the
history survives restarts and costs a bounded amount of memory: one small hash per minute and per
hour, with a field per metric and queue that had something happen.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.keys import Keys
from runtime.broker.scripts import Scripts
from runtime.errors import InvalidRequest

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
METRICS = ("enqueued", "started", "completed", "failed", "discarded", "cancelled", "wait_ms")
PERIODS_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": HOUR_MS, "1d": 24 * HOUR_MS}
MAX_POINTS = 1_500
ROLLUP_MINUTES_PER_CALL = 120
THROUGHPUT_MINUTES = 5  # processed_per_minute is the mean over the last closed minutes


class StatsHistory:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, *, minute_retention_ms: int,
                 hour_retention_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.minute_retention_ms = minute_retention_ms
        self.hour_retention_ms = hour_retention_ms

    async def rollup(self, *, now_ms: int | None = None) -> int:
        """Roll the minutes closed since the last call into hours (the scheduler calls this)."""
        now = timefmt.now_ms() if now_ms is None else now_ms
        total = 0
        while True:
            rolled = int(await self.scripts.call(
                "stats_rollup", keys=[self.keys.prefix],
                args=[str(now), str(self.minute_retention_ms), str(self.hour_retention_ms),
                      str(ROLLUP_MINUTES_PER_CALL)],
            ))
            total += rolled
            if rolled < ROLLUP_MINUTES_PER_CALL:
                return total

    async def series(
        self, *, period: str, since_ms: int | None, until_ms: int | None, queue: str | None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """Points from `since` to `until`, one per period, oldest first, zeros included. Minutes
        are read where they are still kept (the last `minute retention`), hours before that."""
        if period not in PERIODS_MS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS_MS)}.")
        step = PERIODS_MS[period]
        now = timefmt.now_ms() if now_ms is None else now_ms
        until = min(now, until_ms) if until_ms is not None else now
        since = since_ms if since_ms is not None else until - (HOUR_MS if step < HOUR_MS else 24 * HOUR_MS)
        if since > until:
            raise InvalidRequest("since must not be after until.")
        minute_floor = now - now % MINUTE_MS - self.minute_retention_ms + MINUTE_MS  # minutes kept from here
        # Sub-hour periods need minutes, so they reach back as far as minutes are kept; longer
        # ones as far as hours are.
        since = max(since, minute_floor if step < HOUR_MS else now - self.hour_retention_ms)
        first = since - since % step
        points = (until - first) // step + 1
        if points > MAX_POINTS:
            raise InvalidRequest(f"That range holds {points} points of {period}; at most {MAX_POINTS}: "
                                 "shorten it or take a longer period.")
        end = first + points * step
        sources: list[tuple[int, str]] = []  # (start of what the key covers, key)
        if step < HOUR_MS:
            sources = [(t, self.keys.stats_minute(t)) for t in range(first, end, MINUTE_MS)]
        else:
            rolled = int(await self.redis.get(self.keys.stats_rolled) or 0)  # last minute in its hour
            for hour in range(first - first % HOUR_MS, end, HOUR_MS):
                if hour < minute_floor or hour + HOUR_MS - MINUTE_MS <= rolled:
                    # Every minute of it is in the hour's hash (and some may be gone by now).
                    sources.append((hour, self.keys.stats_hour(hour)))
                else:  # read minute by minute: includes the minutes not rolled yet
                    sources += [(t, self.keys.stats_minute(t)) for t in range(hour, hour + HOUR_MS, MINUTE_MS)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, key in sources:
                pipe.hgetall(key)
            replies = await pipe.execute()
        buckets: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
        for (start, _), fields in zip(sources, replies, strict=True):
            if start < first:
                continue
            bucket = buckets[first + (start - first) // step * step]
            for field, value in fields.items():
                metric, _, name = field.decode().partition(":")
                if metric in bucket and (queue is None or name == queue):
                    bucket[metric] += int(value)
        data = []
        for n in range(points):
            at = first + n * step
            counts = buckets.get(at) or dict.fromkeys(METRICS, 0)
            waited = counts.pop("wait_ms")
            data.append({"timestamp": timefmt.format_ms(at), **counts, "processed": counts["completed"],
                         "avg_wait_ms": round(waited / counts["started"], 1) if counts["started"] else None})
        return {"period": period, "since": timefmt.format_ms(first), "until": timefmt.format_ms(until),
                "queue": queue, "data": data}

    async def last_minute(self, *, now_ms: int | None = None) -> dict[str, dict[str, int]]:
        """queue -> metric -> count over the minute before now (the minute now is in and the one
        before it, which together cover it). Two HGETALLs."""
        now = timefmt.now_ms() if now_ms is None else now_ms
        current = now - now % MINUTE_MS
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.stats_minute(current - MINUTE_MS))
            pipe.hgetall(self.keys.stats_minute(current))
            replies = await pipe.execute()
        out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
        for fields in replies:
            for field, value in fields.items():
                metric, _, name = field.decode().partition(":")
                if metric in METRICS:
                    out[name][metric] += int(value)
        return dict(out)

    async def per_minute(self, *, now_ms: int | None = None) -> dict[str, dict[str, float]]:
        """queue -> {"processed_per_minute", "failed_per_minute"}, plus "*" for all queues: the
        mean over the last closed minutes."""
        now = timefmt.now_ms() if now_ms is None else now_ms
        current = now - now % MINUTE_MS
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in range(1, THROUGHPUT_MINUTES + 1):
                pipe.hgetall(self.keys.stats_minute(current - n * MINUTE_MS))
            replies = await pipe.execute()
        sums: dict[str, dict[str, float]] = defaultdict(lambda: {"processed_per_minute": 0.0, "failed_per_minute": 0.0})
        for fields in replies:
            for field, value in fields.items():
                metric, _, name = field.decode().partition(":")
                target = {"completed": "processed_per_minute", "failed": "failed_per_minute"}.get(metric)
                if target:
                    for key in (name, "*"):
                        sums[key][target] += int(value) / THROUGHPUT_MINUTES
        sums["*"]  # noqa: B018 - present even when nothing happened
        return {q: {k: round(v, 2) for k, v in rates.items()} for q, rates in sums.items()}
