"""Listing and searching jobs for the admin API: read from the state indexes, never a scan of
every job.

Each state has an index (see :mod:`runtime.broker.keys`): a queue's ``available`` set, the
global ``active`` and ``delayed`` sets, and each queue's ``completed``, ``cancelled`` and
``discarded`` sets. A listing walks the index of the state asked for (with no state, the states
one after another, in :data:`STATE_ORDER`); an index kept per queue is merged across queues by
score when no queue is given. The other filters (type, created-at range, worker, error type and
a text search over args and meta) are checked on each job read, within a bounded window of
index entries per call: a page may then hold fewer items than asked while ``has_more`` says to
follow ``next_cursor``. The cursor names a position in the walk (state, score, id), so pages
stay stable while jobs arrive and leave.

Cost per call: one ZRANGE per index read (with no queue given, one per queue of a per-queue
index, at most :data:`MAX_MERGED_QUEUES`), one pipelined HMGET per window of entries read, and
one HGETALL of each queue's counts for the total. Nothing grows with the number of jobs stored.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker.keys import Keys
from runtime.broker.render import DEFAULT_MAX_ATTEMPTS
from runtime.errors import InvalidRequest

# The walk's order with no state given: what is running, what is next, what has ended.
STATE_ORDER = ("active", "available", "scheduled", "retryable", "completed", "discarded", "cancelled")
_GLOBAL_INDEX = {"active": "active", "scheduled": "delayed", "retryable": "delayed"}
_ENDED = frozenset({"completed", "cancelled", "discarded"})
# Natural order of each index: live ones next-first (queue order, lease deadline, due time),
# ended ones newest first.
_NATURAL_DESC = _ENDED

MAX_MERGED_QUEUES = 500
SCAN_WINDOW = 2_000  # index entries read per call when filters apply
TEXT_SCAN_WINDOW = 500  # the same when the text search reads args and meta
MAX_TEXT = 256
CHUNK = 100  # index entries read at a time when filters apply
TIE_ROOM = 16  # extra entries read past a cursor, for those tied with it

_SUMMARY_FIELDS = (
    "id", "type", "queue", "state", "priority", "attempt", "max_attempts", "created_at", "enqueued_at",
    "started_at", "completed_at", "cancelled_at", "discarded_at", "scheduled_at", "worker_id", "error",
    "workflow_id", "progress",
)
_TIME_FIELDS = frozenset({"created_at", "enqueued_at", "started_at", "completed_at", "cancelled_at", "discarded_at"})


class ErrorInfo(msgspec.Struct):
    type: str | None = None
    code: str | None = None
    message: str | None = None


_error_decoder = msgspec.json.Decoder(ErrorInfo)


class JobFilter(msgspec.Struct, kw_only=True, frozen=True):
    """What a listing keeps. `type` ending in `*` is a prefix; `text` is a substring of the
    job's args or meta JSON; the time range is on created_at (ms, inclusive)."""

    queue: str | None = None
    state: str | None = None
    type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    worker: str | None = None
    error_type: str | None = None
    text: str | None = None

    def refines_index(self) -> bool:
        """Whether anything beyond the state's own index (and a queue) decides a match."""
        return any(v is not None for v in (self.type, self.since_ms, self.until_ms, self.worker,
                                            self.error_type, self.text))


class Page(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]]
    total: int | None  # exact when only queue and state filter, else None
    next_cursor: str | None
    scanned: int


class _Cursor(msgspec.Struct, array_like=True):
    state: int  # position in the walk's states
    score: float
    member: bytes
    fresh: bool = False  # at the start of that state's index (score and member unused)


_cursor_encoder = msgspec.msgpack.Encoder()
_cursor_decoder = msgspec.msgpack.Decoder(_Cursor)


def encode_cursor(cursor: _Cursor) -> str:
    return base64.urlsafe_b64encode(_cursor_encoder.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _cursor_decoder.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise InvalidRequest("Query parameter 'cursor' must be a cursor returned by this endpoint.") from None
    if cursor.state < 0 or not math.isfinite(cursor.score):
        raise InvalidRequest("Query parameter 'cursor' must be a cursor returned by this endpoint.")
    return cursor


class JobListing:
    """Pages of job summaries matching a :class:`JobFilter`."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def page(
        self, flt: JobFilter, *, limit: int, cursor: str | None = None, order: str | None = None,
        ids_only: bool = False,
    ) -> Page:
        states = (flt.state,) if flt.state else STATE_ORDER
        if flt.state is not None and flt.state not in STATE_ORDER:
            raise InvalidRequest(f"Jobs in state '{flt.state}' are not indexed for listing; "
                                 f"filter by one of {', '.join(STATE_ORDER)}.")
        at = decode_cursor(cursor) if cursor else None
        if at is not None and at.state >= len(states):
            raise InvalidRequest("Query parameter 'cursor' does not belong to this listing.")
        queues = [flt.queue] if flt.queue else await self._queue_names()
        window = TEXT_SCAN_WINDOW if flt.text else SCAN_WINDOW
        items: list[dict[str, Any]] = []
        scanned = 0
        next_cursor: str | None = None
        first = at.state if at else 0
        for position in range(first, len(states)):
            state = states[position]
            desc = (order == "desc") if order else state in _NATURAL_DESC
            after = (at.score, at.member) if at and position == at.state and not at.fresh else None
            if scanned >= window or len(items) >= limit:  # out of room before this state began
                next_cursor = encode_cursor(_Cursor(position, 0.0, b"", True))
                break
            # Only a per-queue index of this state, unfiltered, says all a listing of ids needs.
            blind = ids_only and not flt.refines_index() and state not in _GLOBAL_INDEX
            while len(items) < limit:
                # In chunks: a match found early ends the read early.
                budget = min(window - scanned, limit - len(items) if not flt.refines_index()
                             else max(CHUNK, 2 * (limit - len(items))))
                if budget <= 0:
                    break
                entries = await self._entries(state, queues, desc=desc, after=after, count=budget)
                if not entries:
                    after = None
                    break
                scanned += len(entries)
                rows: list[dict[str, bytes] | None] = (
                    [] if blind else await self._read([m for _, m in entries], flt, want_text=flt.text is not None))
                for n, (score, member) in enumerate(entries):
                    after = (score, member)
                    if blind:
                        items.append({"id": member.decode()})
                    else:
                        row = rows[n]
                        if row is None or not _matches(row, flt, state):
                            continue
                        items.append({"id": member.decode()} if ids_only else _summary(row))
                    if len(items) >= limit:
                        break
                if len(entries) < budget and len(items) < limit:
                    after = None
                    break
            if after is not None:  # stopped inside this state: continue from here
                next_cursor = encode_cursor(_Cursor(position, after[0], after[1]))
                break
        total = None if flt.refines_index() else await self._total(states, queues, flt)
        return Page(items=items, total=total, next_cursor=next_cursor, scanned=scanned)

    async def summaries(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The summaries of the named jobs that exist, in order. One pipelined HMGET."""
        rows = await self._read([i.encode() for i in ids], JobFilter(), want_text=False)
        return [_summary(row) for row in rows if row is not None]

    async def error_types(self, ids: Sequence[str]) -> list[str]:
        """The type (else code) of each named job's last error, "unknown" without one. One
        pipelined HGET."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.keys.job(job_id), "error")
            replies = await pipe.execute()
        return [(info.type or info.code or "unknown") if (info := _error_info(raw)) else "unknown" for raw in replies]

    async def _queue_names(self) -> list[str]:
        names = sorted(n.decode() for n in await self.redis.hkeys(self.keys.queues))
        if len(names) > MAX_MERGED_QUEUES:
            raise InvalidRequest(f"There are {len(names)} queues; a listing across more than {MAX_MERGED_QUEUES} "
                                 "needs a queue filter.")
        return names

    def _indexes(self, state: str, queues: Sequence[str]) -> list[str]:
        k = self.keys
        if state in _GLOBAL_INDEX:
            return [getattr(k, _GLOBAL_INDEX[state])]
        if state == "available":
            return [k.available(q) for q in queues]
        return [k.ended(q, state) for q in queues]

    async def _entries(
        self, state: str, queues: Sequence[str], *, desc: bool, after: tuple[float, bytes] | None, count: int,
    ) -> list[tuple[float, bytes]]:
        """The next `count` entries of the state's indexes (merged by score, then member) after
        the position `after`, in the order asked."""
        indexes = self._indexes(state, queues)
        start, end = _bounds(desc, after)
        want = count + (TIE_ROOM if after else 0)
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip for every queue
            for index in indexes:
                pipe.zrange(index, start, end, desc=desc, withscores=True, byscore=True, offset=0, num=want)
            chunks = await pipe.execute()
        merged: list[tuple[float, bytes]] = []
        for index, chunk in zip(indexes, chunks, strict=True):
            part = [(score, member) for member, score in chunk if not _seen(score, member, after, desc)]
            if len(chunk) == want and len(part) < count:
                part = await self._after(index, desc=desc, after=after, count=count)  # a long run of ties
            merged += part
        merged.sort(reverse=desc)
        return merged[:count]

    async def _after(
        self, index: str, *, desc: bool, after: tuple[float, bytes] | None, count: int,
    ) -> list[tuple[float, bytes]]:
        start, end = _bounds(desc, after)
        out: list[tuple[float, bytes]] = []
        offset = 0
        while len(out) < count:
            want = count - len(out) + (TIE_ROOM if after else 0)  # room for entries tied with the cursor
            chunk = await self.redis.zrange(index, start, end, desc=desc, withscores=True, byscore=True,
                                            offset=offset, num=want)
            offset += len(chunk)
            for member, score in chunk:
                if not _seen(score, member, after, desc):
                    out.append((score, member))
            if len(chunk) < want:
                break
        return out[:count]

    async def _read(self, ids: Sequence[bytes], flt: JobFilter, *, want_text: bool) -> list[dict[str, bytes] | None]:
        fields = list(_SUMMARY_FIELDS) + (["args", "meta"] if want_text else [])
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id.decode()), fields)
            replies = await pipe.execute()
        rows: list[dict[str, bytes] | None] = []
        for reply in replies:
            if reply[0] is None:
                rows.append(None)  # gone since the index was read
            else:
                row = dict(zip(fields, reply, strict=True))
                if row["max_attempts"] is None:  # the hash leaves out the default
                    row["max_attempts"] = DEFAULT_MAX_ATTEMPTS
                rows.append({name: value for name, value in row.items() if value is not None})
        return rows

    async def _total(self, states: Sequence[str], queues: Sequence[str], flt: JobFilter) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.hmget(self.keys.counts(queue), list(states))
            replies = await pipe.execute()
        return sum(max(0, int(v)) for reply in replies for v in reply if v is not None)


def _bounds(desc: bool, after: tuple[float, bytes] | None) -> tuple[float | str, str]:
    """The ZRANGE BYSCORE bounds of a walk from the cursor's score (inclusive: ties are dropped
    by _seen) to the end of the index, in the walk's direction."""
    if after is None:
        return ("+inf", "-inf") if desc else ("-inf", "+inf")
    return (after[0], "-inf") if desc else (after[0], "+inf")


def _seen(score: float, member: bytes, after: tuple[float, bytes] | None, desc: bool) -> bool:
    """Whether an index entry is at or before the cursor in the walk's order (score, then member:
    Redis orders equal scores by member, reversed with REV)."""
    if after is None or score != after[0]:
        return False
    return member >= after[1] if desc else member <= after[1]


def _matches(row: dict[str, bytes], flt: JobFilter, state: str) -> bool:
    if row.get("state", b"").decode() != state:
        return False  # the delayed index holds two states; an entry may be mid-transition
    if flt.queue is not None and row.get("queue", b"").decode() != flt.queue:
        return False
    if flt.type is not None:
        job_type = row.get("type", b"").decode()
        if flt.type.endswith("*"):
            if not job_type.startswith(flt.type[:-1]):
                return False
        elif job_type != flt.type:
            return False
    if flt.since_ms is not None or flt.until_ms is not None:
        created = int(row.get("created_at", b"0"))
        if flt.since_ms is not None and created < flt.since_ms:
            return False
        if flt.until_ms is not None and created > flt.until_ms:
            return False
    if flt.worker is not None and row.get("worker_id", b"").decode() != flt.worker:
        return False
    if flt.error_type is not None:
        info = _error_info(row.get("error"))
        if info is None or flt.error_type not in (info.type, info.code):
            return False
    if flt.text is not None:
        needle = flt.text.encode()
        if needle not in row.get("args", b"") and needle not in row.get("meta", b""):
            return False
    return True


def _error_info(raw: bytes | None) -> ErrorInfo | None:
    if not raw:
        return None
    try:
        return _error_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _summary(row: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("args", "meta", "error"):
            continue
        if name in _TIME_FIELDS:
            out[name] = timefmt.format_ms(int(value))
        elif name in ("priority", "attempt", "max_attempts"):
            out[name] = int(value)
        elif name == "progress":
            out[name] = float(value)
        else:
            out[name] = value.decode()
    info = _error_info(row.get("error"))
    if info is not None:
        out["error"] = {"type": info.type or info.code, "message": info.message}
    return out
