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
from runtime.broker.records import NewJob, build_job, split_extras
from runtime.cron_schedule import CronSchedule, parse_cron
from runtime.envelope import FLAT_OPTION_FIELDS, CronRequest, EnqueueRequest
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


def _normalise(req: CronRequest, job_fields: dict[str, Any]) -> CronEntry:
    """The registration to store. `job_fields` are the request's top-level fields that are not the
    registration's own (envelope.CRON_FIELDS): in the prose shape they are the job's."""
    given = {value for value in (req.expression, req.cron, req.schedule) if value}
    if len(given) > 1:  # three names of one field (the spec's and two common spellings)
        raise InvalidRequest("expression, cron and schedule name the same field: give the schedule once.")
    expression = given.pop() if given else None
    if not expression:
        raise InvalidRequest("expression is required")
    flat = {"type": req.type, "args": req.args, "meta": req.meta, "options": req.options, **job_fields}
    flat = {name: value for name, value in flat.items() if value is not None}
    if req.job_template is not None:
        if flat:  # one of the two would be ignored
            raise InvalidRequest(
                "Give the job either as job_template or as top-level fields, not both "
                f"(top-level: {', '.join(sorted(flat))}).")
        template = dict(req.job_template)
    elif req.type is not None:
        template = {**flat, "args": req.args or []}
    else:
        raise InvalidRequest("job_template.type is required")
    policy = "cancel_previous" if req.overlap_policy == "cancel" else req.overlap_policy
    now = timefmt.now_ms()
    return CronEntry(
        name=req.name, expression=expression, timezone=req.timezone, overlap_policy=policy,
        enabled=req.enabled, description=req.description, job_template=_gather_options(template),
        created_at=now, updated_at=now,
    )


def _gather_options(template: dict[str, Any]) -> dict[str, Any]:
    """Move the job fields given at the template's top level (`queue`, `priority`...) into its
    `options`, where the stored template and its view keep them. The same field given in both
    places with different values is refused rather than one of them dropped."""
    options = template.get("options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("Invalid job_template: options must be an object")
    gathered = dict(options or {})
    out = {}
    for name, value in template.items():
        if name not in FLAT_OPTION_FIELDS:
            out[name] = value
        elif name in gathered and gathered[name] != value:
            raise InvalidRequest(f"'{name}' is given both at the top level and in options, with different values.")
        else:
            gathered[name] = value
    if gathered:
        out["options"] = gathered
    return out


def _time_field(state: dict[bytes, bytes], name: bytes) -> str | None:
    value = state.get(name)
    return timefmt.format_ms(int(value)) if value else None


def _schedule(entry: CronEntry) -> CronSchedule:
    try:
        return parse_cron(entry.expression, entry.timezone)
    except ValueError as err:
        raise InvalidRequest(f"Invalid cron: {err}") from None


def _template_job(entry: CronEntry, tick_ms: int, now_ms: int) -> NewJob:
    """The job one tick enqueues: the template as an enqueue request body, with the cron's meta.
    Its fields the envelope does not name are kept, as an enqueue keeps them."""
    template = {"args": [], **entry.job_template}
    try:
        req = msgspec.json.decode(_encode(template), type=EnqueueRequest)
    except msgspec.DecodeError as err:
        raise InvalidRequest(f"Invalid job_template: {err}") from None
    req.meta = {**(req.meta or {}), "cron_name": entry.name, "cron_triggered_at": timefmt.format_ms(tick_ms)}
    extras = split_extras({name: msgspec.Raw(_encode(value)) for name, value in template.items()})
    return build_job(req, extras, job_id=uuid7(), now_ms=now_ms)


class Crons:
    """Register, list and fire cron jobs."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.keys = broker.keys

    async def register(
        self, req: CronRequest, job_fields: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace (upsert by name). Returns the view and whether it was new.
        `job_fields`: the request's other top-level fields (see `_normalise`)."""
        entry = _normalise(req, job_fields or {})
        schedule = _schedule(entry)
        _template_job(entry, 0, entry.created_at)  # validate the template now, not at the first tick
        previous = await self.redis.hget(self.keys.crons, entry.name)
        same_schedule = False
        if previous is not None:
            old = _entry_decoder.decode(previous)
            entry.created_at = old.created_at
            same_schedule = (old.expression, old.timezone) == (entry.expression, entry.timezone)
        next_ms = schedule.next_after_ms(timefmt.now_ms())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.crons, entry.name, _encode(entry))
            pipe.hdel(self.keys.cron_state(entry.name), *BROKEN_FIELDS)
            if entry.enabled:
                # The same schedule keeps its next tick (NX: whatever it is by now), so a deploy
                # that registers its crons again neither loses a tick that is due nor puts one
                # off; an @every cron registered at each start still fires.
                pipe.zadd(self.keys.cron_next, {entry.name: next_ms}, nx=same_schedule)
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

    async def list(self, offset: int = 0, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of the crons by name (`limit` None: all from `offset`), and how many there are.
        Only the page's crons are read."""
        names = sorted(n.decode() for n in await self.redis.hkeys(self.keys.crons))
        page = names[offset:] if limit is None else names[offset : offset + limit]
        views = []
        for name in page:
            try:
                views.append(await self.get(name))
            except NotFound:
                continue  # deleted meanwhile
        return views, len(names)

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
                # NX: enabling an enabled cron keeps its next tick (one that is due included); a
                # disabled one starts from now
                pipe.zadd(self.keys.cron_next, {name: _schedule(entry).next_after_ms(timefmt.now_ms())}, nx=True)
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
        job = _template_job(entry, now, now)
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
            # The prose's shape beside openapi's: the template's fields flat, and a status
            "type": entry.job_template.get("type"),
            "args": entry.job_template.get("args", []),
            "status": "active" if scheduled else "disabled",
        }
        for name in ("meta", "options"):
            if name in entry.job_template:
                view[name] = entry.job_template[name]
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
        job = _template_job(entry, tick_ms, now_ms)
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
