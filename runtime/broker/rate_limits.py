"""Per-key rate limits (the rate-limiting extension): policies at enqueue, inspection, overrides.

A job's ``options.rate_limit`` names a partition ``key`` and its limits. Every job of one key
shares the key's counters; each job is held to its own policy (jobs of one key normally carry the
same one, and the inspection shows the latest enqueued). fetch.lua enforces them in the claim's
own script, so the check, the claim and the count are one atomic step:

- ``concurrency``: at most N of the key's jobs active at once. The key's active jobs are a set,
  added to by the claim and removed from by every way out of ``active`` (ack, nack, cancel, lease
  expiry): a set, not a counter, so a repeated release cannot drift it, and a fetch that finds the
  key full re-checks the members' states (at most every few seconds) so a missed release heals.
- ``rate``: at most N starts per window, a **sliding window** (a log of the starts inside it).
- ``throttle``: starts spaced at least period/limit apart.
- ``on_limit``: ``wait`` (default; the job stays ``available`` in its place and the next eligible
  job is tried), ``reschedule`` (the job becomes ``scheduled`` for when the limit should allow it)
  or ``drop`` (discarded, error ``rate_limited``).

A policy without a ``key`` (the spec requires one; older clients omit it) applies to its queue:
``max_per_second`` and ``rate`` become the queue's rate limit (as ``PUT .../queues/{q}/config``
sets it), any other limit takes the key ``queue:<name>``.

Redis (``P`` the prefix; a key is ``^[a-zA-Z0-9][a-zA-Z0-9._:-]*$``, so the parts cannot collide):

=========================  =====  ================================================================
``P rl:<key>``             hash   policy (latest enqueued), ov_conc/ov_until (an override),
                                  next_at (throttle), blocked (a fetch found it at its limit:
                                  the queues whose jobs it held, space-separated, woken when a
                                  slot frees; "1" as an earlier version wrote it), healed_at
``P rl-active:<key>``      set    ids of the key's active jobs
``P rl-starts:<key>``      zset   <id>:<claim> -> start time (ms), inside the rate window
``P rl-jobs:<key>``        set    ids of the key's unfinished jobs (removed when a job ends)
``P rate-limits``          zset   key -> last enqueue (ms): the listing
=========================  =====  ================================================================
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from redis.asyncio import Redis

from runtime import timefmt
from runtime.errors import InvalidRequest

KEY_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:-]*$")
MAX_KEY_LENGTH = 256
MAX_LIMIT = 1_000_000_000
MAX_PERIOD_MS = 30 * 86_400_000
_PERIOD_WORDS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
_POLICY_FIELDS = frozenset({"key", "concurrency", "rate", "period", "throttle", "on_limit", "max_per_second"})
ON_LIMIT = ("wait", "reschedule", "drop")


def period_ms(value: Any, field: str, *, most: int | None = MAX_PERIOD_MS) -> int:
    """A period as an ISO 8601 duration (``PT1M``), a short one (``30s``) or a word (``minute``),
    at least 1 ms and at most `most` (None: unbounded)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be an ISO 8601 duration such as 'PT1M'.")
    if value in _PERIOD_WORDS:
        return _PERIOD_WORDS[value]
    try:
        ms = timefmt.parse_duration_ms(value)
    except ValueError as err:
        raise InvalidRequest(f"{field}: {err}") from None
    if ms < 1:
        raise InvalidRequest(f"{field} must be at least 1 ms")
    if most is not None and ms > most:
        raise InvalidRequest(f"{field} must be between 1 ms and 30 days.")
    return ms


def _count(value: Any, field: str, *, least: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= MAX_LIMIT:
        raise InvalidRequest(f"{field} must be an integer between {least} and {MAX_LIMIT}.")
    return value


def _windowed(value: Any, field: str, default_period: Any) -> tuple[int, int]:
    """(limit, period ms) of a ``rate`` or ``throttle``: an object, or a bare limit beside a period."""
    if isinstance(value, dict):
        unknown = set(value) - {"limit", "period"}
        if unknown:
            raise InvalidRequest(f"{field} has unknown fields: {', '.join(sorted(unknown))}.")
        return _count(value.get("limit"), f"{field}.limit"), period_ms(value.get("period", "PT1S"), f"{field}.period")
    return _count(value, field), period_ms(default_period if default_period is not None else "PT1S", "rate_limit.period")


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.match(key) or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"rate_limit.key must match {KEY_PATTERN.pattern} and be at most {MAX_KEY_LENGTH} characters.")
    return key


def policy_fields(policy: Any, queue: str) -> dict[str, str]:
    """A job's ``rate_limit`` as the job-hash fields the scripts read (400 on a bad policy).

    ``rl_key`` and ``rl_policy`` ("concurrency,rate limit,rate window ms,throttle interval ms,
    on_limit", empty parts for what is not limited: short, so the job hash stays compact) for a
    keyed limit; ``rl_max``/``rl_window_ms`` (the queue's rate limit) for a keyless window.
    """
    if not isinstance(policy, dict):
        raise InvalidRequest("rate_limit must be an object.")
    unknown = set(policy) - _POLICY_FIELDS
    if unknown:
        raise InvalidRequest(f"rate_limit has unknown fields: {', '.join(sorted(unknown))}.")
    on_limit = policy.get("on_limit", "wait")
    if on_limit not in ON_LIMIT:
        raise InvalidRequest("rate_limit.on_limit must be one of: wait, reschedule, drop.")
    fields: dict[str, str] = {}
    rate = policy.get("rate")
    if "max_per_second" in policy:
        if rate is not None:
            raise InvalidRequest("rate_limit: give either max_per_second or rate, not both.")
        rate = {"limit": _count(policy["max_per_second"], "rate_limit.max_per_second"), "period": "PT1S"}
    rate_limit, rate_ms = _windowed(rate, "rate_limit.rate", policy.get("period")) if rate is not None else (None, None)
    throttle = policy.get("throttle")
    throttle_ms = None
    if throttle is not None:
        limit, window = _windowed(throttle, "rate_limit.throttle", None)
        throttle_ms = max(1, window // limit)
    concurrency = policy.get("concurrency")
    if concurrency is not None:
        concurrency = _count(concurrency, "rate_limit.concurrency", least=0)
    key = policy.get("key")
    if key is None:
        if rate_limit is not None:  # a queue-wide window, as the queue's config sets it
            fields.update(rl_max=str(rate_limit), rl_window_ms=str(rate_ms))
            rate_limit = rate_ms = None
        if concurrency is None and throttle_ms is None and on_limit == "wait":
            return fields
        key = f"queue:{queue}"
    fields["rl_key"] = check_key(key)
    fields["rl_policy"] = ",".join(
        "" if v is None else str(v) for v in (concurrency, rate_limit, rate_ms, throttle_ms)) + "," + on_limit
    return fields


def _parse_policy(text: bytes | None) -> dict[str, Any] | None:
    if not text:
        return None
    parts = text.decode().split(",")
    if len(parts) != 5:
        return None
    conc, rate, rate_ms, throttle_ms, on_limit = (p or None for p in parts)
    return {"concurrency": int(conc) if conc else None, "rate": int(rate) if rate else None,
            "rate_ms": int(rate_ms) if rate_ms else None, "throttle_ms": int(throttle_ms) if throttle_ms else None,
            "on_limit": on_limit or "wait"}


def _effective(policy: dict[str, Any] | None, fields: list[bytes | None], now_ms: int) -> dict[str, Any] | None:
    """The policy with an active window override in place of its own window."""
    _, _, ov_until, _, _, ov_rate, ov_rate_ms = fields
    if ov_until is None or int(ov_until) <= now_ms or ov_rate is None or ov_rate_ms is None:
        return policy
    return {**(policy or {"concurrency": None, "throttle_ms": None, "on_limit": "wait"}),
            "rate": int(ov_rate), "rate_ms": int(ov_rate_ms)}


class OverrideRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /ojs/v1/rate-limits/{key}``: a temporary concurrency cap (0 while an API is down),
    a temporary window (``rate`` {limit, period}, or ``limit`` and ``period`` flat), or both."""

    concurrency: int | None = None
    rate: dict[str, Any] | None = None
    limit: int | None = None
    period: str | None = None
    expires_at: str | None = None
    clear: bool = False


class RateLimits:
    """Reads and overrides the per-key state (fetch.lua is what enforces it)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _keys(self, key: str) -> tuple[str, str, str, str]:
        p = self.prefix
        return f"{p}rl:{key}", f"{p}rl-active:{key}", f"{p}rl-starts:{key}", f"{p}rl-jobs:{key}"

    async def inspect(self, key: str, now_ms: int) -> dict[str, Any]:
        """The partition's state: 200 for a key with no data too (every count 0). Cost: O(1) reads
        plus O(log n) for the window count."""
        check_key(key)
        return (await self._inspect_many([key], now_ms))[0]

    async def _inspect_many(self, names: list[str], now_ms: int) -> list[dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in names:
                h, active, _, jobs = self._keys(key)
                pipe.hmget(h, "policy", "ov_conc", "ov_until", "next_at", "until", "ov_rate", "ov_rate_ms")
                pipe.scard(active)
                pipe.scard(jobs)
            replies = await pipe.execute()
        policies = [_effective(_parse_policy(replies[i * 3][0]), replies[i * 3], now_ms) for i in range(len(names))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, policy in zip(names, policies, strict=True):
                window = (policy or {}).get("rate_ms")
                _, _, starts, _ = self._keys(key)
                if window:
                    pipe.zcount(starts, f"({now_ms - window}", "+inf")
                    pipe.zrangebyscore(starts, f"({now_ms - window}", "+inf", start=0, num=1, withscores=True)
                else:
                    pipe.exists(starts)
                    pipe.exists(starts)
            windows = await pipe.execute()
        return [self._view(key, policy, replies[i * 3], replies[i * 3 + 1], replies[i * 3 + 2],
                           windows[i * 2], windows[i * 2 + 1], now_ms)
                for i, (key, policy) in enumerate(zip(names, policies, strict=True))]

    @staticmethod
    def _view(key: str, policy: dict[str, Any] | None, fields: list[bytes | None], active: int, unfinished: int,
              in_window: int, oldest: Any, now_ms: int) -> dict[str, Any]:
        _, ov_conc, ov_until, next_at, until, ov_rate, ov_rate_ms = fields
        waiting = max(0, unfinished - active)
        view: dict[str, Any] = {"key": key, "active": active, "waiting_count": waiting}
        limit = (policy or {}).get("concurrency")
        override: dict[str, Any] | None = None
        if ov_until is not None and int(ov_until) > now_ms:
            override = {"expires_at": timefmt.format_ms(int(ov_until))}
            if ov_conc is not None:
                override["concurrency"] = int(ov_conc)
                limit = int(ov_conc) if limit is None else min(limit, int(ov_conc))
            if ov_rate is not None and ov_rate_ms is not None:
                override.update(limit=int(ov_rate), period=timefmt.format_duration_ms(int(ov_rate_ms)))
        if limit is not None:
            view["concurrency"] = {"limit": limit, "active": active, "available": max(0, limit - active)}
        if policy and policy.get("rate"):
            window = policy["rate_ms"]
            resets = int(oldest[0][1]) + window if oldest else now_ms
            view["rate"] = {"limit": policy["rate"], "period": timefmt.format_duration_ms(window),
                            "current_count": in_window, "window_resets_at": timefmt.format_ms(resets),
                            "algorithm": "sliding_window"}
        if policy and policy.get("throttle_ms"):
            allowed = max(now_ms, int(next_at or 0))
            view["throttle"] = {"interval_ms": policy["throttle_ms"], "next_allowed_at": timefmt.format_ms(allowed)}
        if until is not None and int(until) > now_ms:
            view["paused_until"] = timefmt.format_ms(int(until))
        if policy:
            view["on_limit"] = policy["on_limit"]
        if override:
            view["override"] = override
        if view != {"key": key, "active": active, "waiting_count": waiting}:
            # The flat summary some admin UIs read: the window's limit and period, else the
            # concurrency limit; and the waiting jobs.
            if "rate" in view:
                view.update(limit=view["rate"]["limit"], period=view["rate"]["period"], waiting=waiting)
            elif "concurrency" in view:
                view.update(limit=view["concurrency"]["limit"], period=None, waiting=waiting)
        return view

    async def list(self, page: int, per_page: int, now_ms: int) -> dict[str, Any]:
        """Keys by last enqueue, newest first: one ZREVRANGE page and the page's states."""
        total = await self.redis.zcard(f"{self.prefix}rate-limits")
        names = [k.decode() for k in await self.redis.zrevrange(
            f"{self.prefix}rate-limits", (page - 1) * per_page, page * per_page - 1)]
        items = await self._inspect_many(names, now_ms) if names else []
        return {"items": items, "pagination": {"total": total, "page": page, "per_page": per_page}}

    async def override(self, key: str, req: OverrideRequest, now_ms: int) -> dict[str, Any]:
        check_key(key)
        h = self._keys(key)[0]
        if req.clear:
            await self.redis.hdel(h, "ov_conc", "ov_rate", "ov_rate_ms", "ov_until", "until")  # and a handler's pause
            return await self.inspect(key, now_ms)
        mapping: dict[str, int | str] = {}
        if req.concurrency is not None:
            mapping["ov_conc"] = _count(req.concurrency, "concurrency", least=0)
        rate = req.rate if req.rate is not None else (
            {"limit": req.limit, "period": req.period or "PT1S"} if req.limit is not None else None)
        if rate is not None:
            if not isinstance(rate, dict):
                raise InvalidRequest("rate must be an object {limit, period}.")
            limit, window = _windowed(rate, "rate", None)
            mapping.update(ov_rate=limit, ov_rate_ms=window)
        if not mapping:
            raise InvalidRequest("Give concurrency, rate (or limit and period), or clear: true to remove the override.")
        if req.expires_at is None:
            raise InvalidRequest("expires_at is required: an override is temporary.")
        try:
            until = timefmt.parse_timestamp_ms(req.expires_at)
        except ValueError as err:
            raise InvalidRequest(f"expires_at: {err}") from None
        if until <= now_ms:
            raise InvalidRequest("expires_at must be in the future.")
        mapping["ov_until"] = until
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(h, "ov_conc", "ov_rate", "ov_rate_ms")  # an override replaces the one before
            pipe.hset(h, mapping=mapping)
            pipe.zadd(f"{self.prefix}rate-limits", {key: now_ms}, nx=True)
            await pipe.execute()
        return await self.inspect(key, now_ms)

