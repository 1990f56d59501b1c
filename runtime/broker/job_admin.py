"""What an operator does to jobs: retry an ended job, delete ended jobs, purge a queue's ended jobs,
and the bulk forms of retry, cancel and delete, by ids or by a listing filter.

Each job is changed by the same atomic scripts as everywhere else (dlq_retry.lua in its "ended"
mode, cancel.lua, delete_ended.lua), so a bulk call that stops half-way (a crash, a dropped
connection) leaves every job either changed or not, never in between, and calling it again is
safe: jobs already changed no longer match the filter, and by id they fail with a reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.job_listing import JobFilter, JobListing
from runtime.broker.scripts import Status
from runtime.errors import Conflict, InvalidRequest, NotFound, OJSError

MAX_BULK = 1_000  # jobs changed per bulk call
PURGE_CHUNK = 500  # jobs deleted per script call
MAX_PURGE = 10_000  # jobs deleted per purge request: repeat while has_more
ENDED_STATES = ("completed", "cancelled", "discarded")
BULK_ACTIONS = ("retry", "cancel", "delete")


class BulkResult(msgspec.Struct, kw_only=True):
    action: str
    matched: int
    succeeded: int
    failed: int
    errors: list[dict[str, str]]
    dry_run: bool
    has_more: bool
    next_cursor: str | None
    job_ids: list[str]


IDS_CURSOR = "ids:"  # a bulk call by ids past its limit goes on at this offset into the ids


def _ids_offset(cursor: str | None, count: int) -> int:
    """Where in the named ids a bulk call by ids starts: its cursor (the next_cursor of a call
    with the same ids) says, else the first."""
    if cursor is None:
        return 0
    offset = cursor.removeprefix(IDS_CURSOR)
    if offset == cursor or not offset.isdigit() or not 0 < int(offset) < count:
        raise InvalidRequest("cursor must be the next_cursor of a bulk call with the same ids.")
    return int(offset)


class PurgeCursor(msgspec.Struct, array_like=True, frozen=True):
    """Where a purge that stopped at its budget goes on: the index of the state it was in (of
    the states asked), the end time (ms) of the last job it kept there (a member of a running
    workflow) and how many it kept of that millisecond. The next call starts at that
    millisecond past those, so the jobs kept before it are not examined again, and one that
    leaves the index meanwhile does not shift where it starts."""

    state: int
    score: int
    kept: int


class JobAdmin:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.keys = broker.keys
        self.listing = JobListing(broker.redis, broker.keys)

    async def retry(self, job_id: str) -> None:
        """A discarded or cancelled job back to available, attempts reset (same id)."""
        status, reason = (await self._retry_many([job_id]))[0]
        if status == Status.NOT_FOUND:
            raise NotFound(reason)
        if status != Status.OK:
            raise Conflict(reason)

    async def delete(self, job_id: str) -> None:
        """An ended job removed for good; a live job is refused (cancel it first)."""
        status, reason = (await self._delete_many([job_id]))[0]
        if status == Status.NOT_FOUND:
            raise NotFound(reason)
        if status != Status.OK:
            raise Conflict(reason)

    async def set_priority(self, job_id: str, priority: int) -> int:
        """A job that has not started gets a new priority; returns the previous one. Only
        available and scheduled jobs (409 otherwise: a running or ended job has no dispatch left)."""
        reply = await self.broker.scripts.call(
            "set_priority", keys=[self.keys.prefix],
            args=[str(timefmt.now_ms()), str(self.broker.settings.events_maxlen), job_id, str(priority)])
        status = int(reply[0])
        if status == Status.NOT_FOUND:
            raise NotFound(f"Job '{job_id}' not found.")
        if status != Status.OK:
            raise Conflict(f"Job '{job_id}' is {reply[1].decode()}: only an available or scheduled job's priority "
                           "can change.")
        return int(reply[1])

    async def purge(self, queue: str, states: Sequence[str], *, older_than_ms: int | None,
                    budget: int = MAX_PURGE, start: PurgeCursor | None = None) -> tuple[int, PurgeCursor | None]:
        """Delete a queue's jobs in the given ended states that ended at or before
        `older_than_ms` (all of them when None), oldest first, at most `budget` per call (and
        as many kept entries examined). Members of running workflows are kept. Returns the
        number deleted and, when the budget ran out first, where the next call goes on (pass it
        as `start`: it starts past the entries this one kept, so a queue whose oldest end holds
        more than a budget's worth of kept jobs is still purged behind them)."""
        bound = "+inf" if older_than_ms is None else str(older_than_ms)
        deleted = 0
        examined_kept = 0
        first = start.state if start is not None else 0
        for index in range(first, len(states)):
            # from `low` (ms; 0: the oldest), past the `kept` jobs of that ms kept before
            low, kept = (start.score, start.kept) if start is not None and index == first else (0, 0)
            while True:
                room = min(PURGE_CHUNK, budget - deleted)
                if room <= 0 or examined_kept >= budget:
                    return deleted, PurgeCursor(index, low, kept)
                gone, skipped, examined, kept_score, kept_there = await self.broker.scripts.call(
                    "delete_ended", keys=[self.keys.prefix],
                    args=[str(timefmt.now_ms()), "range", queue, states[index], bound, str(room), str(kept),
                          str(low)],
                )
                deleted += int(gone)
                examined_kept += int(skipped)
                if int(skipped):
                    last = int(kept_score)
                    kept = kept + int(kept_there) if last == low else int(kept_there)
                    low = last
                if int(examined) < room:
                    break
        return deleted, None

    async def bulk(
        self, action: str, *, flt: JobFilter | None, ids: Sequence[str] | None, cursor: str | None,
        dry_run: bool, limit: int = MAX_BULK, only_state: str | None = None,
    ) -> BulkResult:
        """Apply `action` to the jobs named (ids) or matching the filter, at most `limit`;
        `has_more` and `next_cursor` say whether more matched beyond them (follow the cursor: the
        jobs that could not be changed stay where they were). With `only_state`, named jobs in
        another state are reported failed and left alone."""
        next_cursor = None
        refused: list[dict[str, str]] = []
        if ids is not None:
            named = list(dict.fromkeys(ids))
            start = _ids_offset(cursor, len(named))
            chosen = named[start:start + limit]
            more = start + limit < len(named)
            next_cursor = f"{IDS_CURSOR}{start + limit}" if more else None
            if only_state is not None:
                async with self.broker.redis.pipeline(transaction=False) as pipe:
                    for job_id in chosen:
                        pipe.hget(self.keys.job(job_id), "state")
                    states = await pipe.execute()
                refused = [{"job_id": i, "error": f"Job '{i}' is not {only_state}."}
                           for i, st in zip(chosen, states, strict=True) if st != only_state.encode()]
                chosen = [i for i, st in zip(chosen, states, strict=True) if st == only_state.encode()]
        else:
            assert flt is not None
            page = await self.listing.page(flt, limit=limit, cursor=cursor, ids_only=True)
            chosen = [item["id"] for item in page.items]
            next_cursor = page.next_cursor
            more = next_cursor is not None
        result = BulkResult(action=action, matched=len(chosen) + len(refused), succeeded=0, failed=len(refused),
                            errors=refused, dry_run=dry_run, has_more=more, next_cursor=next_cursor, job_ids=chosen)
        if dry_run or not chosen:
            return result
        if action == "retry":
            outcomes = await self._retry_many(chosen)
        elif action == "delete":
            outcomes = await self._delete_many(chosen)
        else:
            outcomes = await self._cancel_many(chosen)
        for job_id, (status, reason) in zip(chosen, outcomes, strict=True):
            if status == Status.OK:
                result.succeeded += 1
            else:
                result.failed += 1
                result.errors.append({"job_id": job_id, "error": reason})
        return result

    async def _retry_many(self, ids: Sequence[str]) -> list[tuple[int, str]]:
        k = self.keys
        now, maxlen = str(timefmt.now_ms()), str(self.broker.settings.events_maxlen)
        # One atomic script per job, all sent at once: the lean connection pipelines them.
        replies = await asyncio.gather(*(
            self.broker.scripts.call("dlq_retry", keys=[k.prefix, k.job(job_id)], args=[now, maxlen, job_id, "ended"])
            for job_id in ids))
        out = []
        for job_id, reply in zip(ids, replies, strict=True):
            status = int(reply[0])
            if status == Status.OK:
                out.append((status, ""))
            elif status == Status.UNIQUE_CONFLICT:
                out.append((status, f"unique job: job '{reply[1].decode()}' ({reply[2].decode()}) holds its lock"))
            elif status == Status.CONFLICT and reply[1]:
                out.append((status, f"member of workflow '{reply[1].decode()}', which is still running"))
            elif status == Status.CONFLICT and reply[2] == b"cancelled_running":
                until = timefmt.format_ms(int(reply[3]))
                out.append((status, f"Job '{job_id}' was cancelled while running, and its worker may not have "
                                    f"stopped it yet: retry it after {until} (its lease)."))
            elif status == Status.CONFLICT:
                out.append((status, f"Job '{job_id}' is {reply[2].decode()}: only discarded or cancelled jobs "
                                    "are retried."))
            else:
                out.append((status, f"Job '{job_id}' not found."))
        return out

    async def _delete_many(self, ids: Sequence[str]) -> list[tuple[int, str]]:
        reply = await self.broker.scripts.call("delete_ended", keys=[self.keys.prefix],
                                               args=[str(timefmt.now_ms()), "ids", *ids])
        out = []
        for job_id, (status, state) in zip(ids, reply, strict=True):
            code, text = int(status), state.decode()
            if code == Status.NOT_FOUND:
                out.append((code, f"Job '{job_id}' not found."))
            elif code == Status.CONFLICT and text == "workflow":
                out.append((code, f"Job '{job_id}' is a member of a workflow that is still running."))
            elif code == Status.CONFLICT and text == "cancelled_running":
                out.append((code, f"Job '{job_id}' was cancelled while running, and its worker may not have "
                                  "stopped it yet: delete it once its lease has passed."))
            elif code == Status.CONFLICT:
                out.append((code, f"Job '{job_id}' is {text}: only ended jobs are deleted (cancel it first)."))
            else:
                out.append((code, ""))
        return out

    async def _cancel_many(self, ids: Sequence[str]) -> list[tuple[int, str]]:
        results = await self.broker.cancel_many(ids)
        out: list[tuple[int, str]] = []
        for result in results:
            if isinstance(result, OJSError):
                out.append((Status.NOT_FOUND if isinstance(result, NotFound) else Status.CONFLICT, result.message))
            elif isinstance(result, Exception):
                raise result
            else:
                out.append((Status.OK, ""))
        return out


def summary(result: BulkResult) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(result)
    if not result.dry_run:
        body.pop("job_ids")
    return body
