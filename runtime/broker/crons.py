"""Cron registrations and firing.

A registration is JSON in the ``crons`` hash; its next fire time is its score in ``cron:next``.
Every server runs the tick loop; a tick fires through enqueue.lua, which moves ``cron:next`` from
the tick being fired to the following one in the same script that enqueues the job. Of several
servers racing on one tick exactly one sees its expected score and fires; the others are told
the tick was claimed. All state is in Redis and re-read every tick.

A tick that creates no job (the previous one still runs under overlap_policy skip, or a job holds
the template's unique lock) is a skipped tick: consumed, counted and recorded in the cron's state,
and the next tick fires as usual. Only a registration that can never fire (its expression or
template no longer valid) is taken off the schedule, and it is then shown disabled, with why.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from redis.exceptions import WatchError

from runtime import metrics, timefmt
from runtime.broker import BACKEND_ERRORS
from runtime.broker.core import Broker
from runtime.broker.records import build_job
from runtime.cron_schedule import CronSchedule, parse_cron
from runtime.envelope import CronRequest, EnqueueRequest
from runtime.errors import InvalidRequest, NotFound
from runtime.ids import uuid7

logger = logging.getLogger(__name__)

RETRY_BROKEN_S = 60
BROKEN_FIELDS = ("last_error", "last_error_at")  # cron state: why it was taken off the schedule


class CronEntry(msgspec.Struct, kw_only=True, omit_defaults=False):
    """A stored registration (what GET returns, less the run state)."""

    name: str
    expression: str
    timezone: str
    overlap_policy: str
    enabled: bool
    description: str | None = None
    job_template: dict[str, Any]
    created_at: int
    updated_at: int


_entry_decoder = msgspec.json.Decoder(CronEntry)
_encode = msgspec.json.encode


def _normalise(req: CronRequest) -> CronEntry:
    expression = req.expression or req.cron or req.schedule
    if not expression:
        raise InvalidRequest("expression is required")
    if req.job_template is not None:
        template = msgspec.to_builtins(req.job_template)
    elif req.type is not None:
        template = {"type": req.type, "args": req.args or []}
        if req.meta is not None:
            template["meta"] = req.meta
        if req.options is not None:
            template["options"] = req.options
    else:
        raise InvalidRequest("job_template.type is required")
    policy = "cancel_previous" if req.overlap_policy == "cancel" else req.overlap_policy
    now = timefmt.now_ms()
    return CronEntry(
        name=req.name, expression=expression, timezone=req.timezone, overlap_policy=policy,
        enabled=req.enabled, description=req.description, job_template=template,
        created_at=now, updated_at=now,
    )


def _time_field(state: dict[bytes, bytes], name: bytes) -> str | None:
    value = state.get(name)
    return timefmt.format_ms(int(value)) if value else None


def _schedule(entry: CronEntry) -> CronSchedule:
    try:
        return parse_cron(entry.expression, entry.timezone)
    except ValueError as err:
        raise InvalidRequest(f"Invalid cron: {err}") from None


def _template_request(entry: CronEntry, tick_ms: int) -> EnqueueRequest:
    template = dict(entry.job_template)
    meta = dict(template.get("meta") or {})
    meta["cron_name"] = entry.name
    meta["cron_triggered_at"] = timefmt.format_ms(tick_ms)
    template["meta"] = meta
    template.setdefault("args", [])
    try:
        return msgspec.json.decode(_encode(template), type=EnqueueRequest)
    except msgspec.DecodeError as err:
        raise InvalidRequest(f"Invalid job_template: {err}") from None


class Crons:
    """Register, list and fire cron jobs."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.keys = broker.keys

    async def register(self, req: CronRequest) -> tuple[dict[str, Any], bool]:
        """Create or replace (upsert by name). Returns the view and whether it was new."""
        entry = _normalise(req)
        schedule = _schedule(entry)
        # Validate the template now, not at the first tick.
        build_job(_template_request(entry, 0), {}, job_id=uuid7(), now_ms=entry.created_at)
        previous = await self.redis.hget(self.keys.crons, entry.name)
        if previous is not None:
            entry.created_at = _entry_decoder.decode(previous).created_at
        next_ms = schedule.next_after_ms(timefmt.now_ms())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.crons, entry.name, _encode(entry))
            pipe.hdel(self.keys.cron_state(entry.name), *BROKEN_FIELDS)
            if entry.enabled:
                pipe.zadd(self.keys.cron_next, {entry.name: next_ms})
            else:
                pipe.zrem(self.keys.cron_next, entry.name)
            await pipe.execute()
        return await self.get(entry.name), previous is None

    async def get(self, name: str) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.crons, name)
            pipe.zscore(self.keys.cron_next, name)
            pipe.hgetall(self.keys.cron_state(name))
            raw, next_ms, state = await pipe.execute()
        if raw is None:
            raise NotFound(f"Cron '{name}' not found.")
        return self._view(_entry_decoder.decode(raw), next_ms, state)

    async def list(self) -> list[dict[str, Any]]:
        names = sorted(n.decode() for n in await self.redis.hkeys(self.keys.crons))
        views = []
        for name in names:
            try:
                views.append(await self.get(name))
            except NotFound:
                continue  # deleted meanwhile
        return views

    async def delete(self, name: str) -> dict[str, Any]:
        view = await self.get(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.crons, name)
            pipe.zrem(self.keys.cron_next, name)
            pipe.delete(self.keys.cron_state(name))
            await pipe.execute()
        return view

    async def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        raw = await self.redis.hget(self.keys.crons, name)
        if raw is None:
            raise NotFound(f"Cron '{name}' not found.")
        entry = _entry_decoder.decode(raw)
        entry.enabled = enabled
        entry.updated_at = timefmt.now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.crons, name, _encode(entry))
            if enabled:
                pipe.hdel(self.keys.cron_state(name), *BROKEN_FIELDS)
                pipe.zadd(self.keys.cron_next, {name: _schedule(entry).next_after_ms(timefmt.now_ms())})
            else:
                pipe.zrem(self.keys.cron_next, name)
            await pipe.execute()
        return await self.get(name)

    async def trigger(self, name: str) -> str:
        """Enqueue the cron's job now, outside its schedule (an operator's "run now"): its ticks
        and its overlap policy are not involved. Returns the new job's id."""
        raw = await self.redis.hget(self.keys.crons, name)
        if raw is None:
            raise NotFound(f"Cron '{name}' not found.")
        entry = _entry_decoder.decode(raw)
        now = timefmt.now_ms()
        job = build_job(_template_request(entry, now), {}, job_id=uuid7(), now_ms=now)
        (done,) = await self.broker.enqueue([job], now_ms=now)
        return done.job_id

    @staticmethod
    def _view(entry: CronEntry, next_ms: float | None, state: dict[bytes, bytes]) -> dict[str, Any]:
        # Enabled means it will fire: stored as enabled and on the schedule.
        scheduled = entry.enabled and next_ms is not None
        view: dict[str, Any] = {
            "name": entry.name,
            "expression": entry.expression,
            "cron": entry.expression,
            "timezone": entry.timezone,
            "overlap_policy": entry.overlap_policy,
            "enabled": scheduled,
            "job_template": entry.job_template,
            "next_run_at": timefmt.format_ms(int(next_ms)) if scheduled and next_ms is not None else None,
            "last_run_at": _time_field(state, b"last_run_at"),
            "run_count": int(state.get(b"run_count", b"0")),
            "skipped_count": int(state.get(b"skipped_count", b"0")),
            "last_skipped_at": _time_field(state, b"last_skipped_at"),
            "last_skip_reason": state[b"last_skip_reason"].decode() if b"last_skip_reason" in state else None,
            "created_at": timefmt.format_ms(entry.created_at),
            "updated_at": timefmt.format_ms(entry.updated_at),
        }
        if entry.description is not None:
            view["description"] = entry.description
        if last_job := state.get(b"last_job_id"):
            view["last_job_id"] = last_job.decode()
        if error := state.get(b"last_error"):
            view["last_error"] = error.decode()
            view["last_error_at"] = _time_field(state, b"last_error_at")
        return view

    # --- firing ----------------------------------------------------------------------------

    async def tick(self, *, now_ms: int | None = None) -> int:
        """Fire every due cron once. Returns the number of jobs enqueued by this server."""
        now = timefmt.now_ms() if now_ms is None else now_ms
        due = await self.redis.zrangebyscore(self.keys.cron_next, "-inf", now, withscores=True)
        fired = 0
        if due and await self.redis.exists(self.keys.maintenance):
            return 0  # maintenance mode: due ticks wait, and fire once (a catch-up) after it
        for raw_name, score in due:
            name = raw_name.decode()
            try:
                fired += await self._fire(name, int(score), now)
            except InvalidRequest as err:
                # Its expression or template is no longer valid (stored by another version): it
                # can never fire, so it leaves the schedule and is shown disabled, with why.
                logger.error("cron %s: cannot fire, disabled: %s", name, err.message)
                await self._disable_broken(name, err.message, now)
            except BACKEND_ERRORS:
                raise  # Redis is down: the scheduler loop backs off and retries
            except Exception:
                # Anything else may pass, and must not stall the crons behind it: try again later.
                logger.exception("cron %s: firing failed; retrying in %s s", name, RETRY_BROKEN_S)
                await self.redis.zadd(self.keys.cron_next, {name: now + RETRY_BROKEN_S * 1000})
        return fired

    async def _fire(self, name: str, tick_ms: int, now_ms: int) -> int:
        raw = await self.redis.hget(self.keys.crons, name)
        if raw is None:
            await self.redis.zrem(self.keys.cron_next, name)  # registration flushed or deleted
            return 0
        entry = _entry_decoder.decode(raw)
        # After downtime only one catch-up firing: the next tick is computed from now.
        next_ms = _schedule(entry).next_after_ms(max(tick_ms, now_ms))
        # skip and cancel_previous act inside the script, after the per-tick claim: a server that
        # lost the claim changes nothing (it must not cancel the winner's fresh job).
        overlap = entry.overlap_policy if entry.overlap_policy in ("skip", "cancel_previous") else "allow"
        job = build_job(_template_request(entry, tick_ms), {}, job_id=uuid7(), now_ms=now_ms)
        outcome, existing, reason = await self.broker.enqueue_cron_tick(
            job, cron_name=name, expression=entry.expression, tick_ms=tick_ms, next_ms=next_ms,
            overlap=overlap, now_ms=now_ms,
        )
        if outcome == "skipped":
            metrics.CRON_TICKS_SKIPPED.labels(reason or "").inc()
            if reason == "queue_full":
                logger.warning("cron %s: tick skipped: queue %s is at its max_depth", name, job.queue)
            else:
                logger.info("cron %s: tick skipped (%s): job %s has not finished", name, reason, existing)
        return 1 if outcome == "fired" else 0

    async def _disable_broken(self, name: str, error: str, now_ms: int) -> None:
        """Disable a registration that cannot fire, unless it was replaced meanwhile (a new one is
        judged at its own first tick)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.keys.crons)
            raw = await pipe.hget(self.keys.crons, name)
            pipe.multi()
            if raw is not None:
                entry = _entry_decoder.decode(raw)
                entry.enabled, entry.updated_at = False, now_ms
                pipe.hset(self.keys.crons, name, _encode(entry))
                pipe.hset(self.keys.cron_state(name), mapping={"last_error": error, "last_error_at": now_ms})
            pipe.zrem(self.keys.cron_next, name)
            try:
                await pipe.execute()
            except WatchError:
                pass
