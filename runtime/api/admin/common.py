"""What the admin endpoints share: query parsing (filters, pages, times) and the confirm guard."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from runtime import timefmt
from runtime.api.routing import Request
from runtime.broker.job_listing import MAX_TEXT, JobFilter, JobListing, Page
from runtime.envelope import QUEUE_PATTERN
from runtime.errors import InvalidRequest

MAX_PER_PAGE = 100
MAX_PAGE = 10_000
MAX_FILTER_VALUE = 256
_queue_name = re.compile(QUEUE_PATTERN)
_STATES = ("available", "active", "scheduled", "retryable", "completed", "discarded", "cancelled")


def time_ms(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return timefmt.parse_timestamp_ms(value)
    except ValueError as err:
        raise InvalidRequest(f"{name} must be an RFC 3339 timestamp: {err}") from None


def page_args(request: Request, default: int = 20) -> tuple[int, int]:
    """(page, per_page), page 1-based."""
    per_page = request.query_int("per_page", default=request.query_int("limit", default=default, minimum=1,
                                                                      maximum=MAX_PER_PAGE),
                                 minimum=1, maximum=MAX_PER_PAGE)
    page = request.query_int("page", default=1, minimum=1, maximum=MAX_PAGE)
    return page, per_page


def pagination(total: int | None, page: int, per_page: int, next_cursor: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"total": total, "page": page, "per_page": per_page}
    out["has_more"] = next_cursor is not None if total is None else page * per_page < total
    out["next_cursor"] = next_cursor
    return out


class FilterBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A job filter in a request body (bulk operations); same meaning as the list query."""

    queue: str | None = None
    state: str | None = None
    type: str | None = None
    since: str | None = None
    until: str | None = None
    worker: str | None = None
    error_type: str | None = None
    q: str | None = None


def checked_filter(values: FilterBody) -> JobFilter:
    for name in ("queue", "state", "type", "worker", "error_type", "q", "since", "until"):
        value = getattr(values, name)
        if value is not None and len(value) > (MAX_TEXT if name == "q" else MAX_FILTER_VALUE):
            raise InvalidRequest(f"Filter '{name}' is too long.")
    if values.queue is not None and (len(values.queue) > 128 or not _queue_name.match(values.queue)):
        raise InvalidRequest(f"Invalid queue name '{values.queue}'.")
    if values.state is not None and values.state not in _STATES:
        raise InvalidRequest(f"state must be one of {', '.join(_STATES)}.")
    return JobFilter(
        queue=values.queue, state=values.state, type=values.type or None,
        since_ms=time_ms(values.since, "since"), until_ms=time_ms(values.until, "until"),
        worker=values.worker or None, error_type=values.error_type or None, text=values.q,
    )


def query_filter(request: Request) -> JobFilter:
    """The list query's filters (an empty parameter is no filter)."""
    names = ("queue", "state", "type", "since", "until", "worker", "error_type", "q")
    given = {name: value for name in names if (value := request.query(name))}
    return checked_filter(FilterBody(**given))


MAX_SKIP = 10_000  # `page` beyond the first walks the listing: bounded
MAX_SKIP_SCAN = 20_000  # index entries that walk may read


async def listing_page(listing: JobListing, flt: JobFilter, request: Request, *, ids_only: bool = False) -> tuple[Page, dict[str, Any]]:
    """The page a list request asks for and its pagination block. `cursor` continues a
    listing; `page` > 1 walks there (at most MAX_SKIP items in)."""
    page, per_page = page_args(request)
    order = request.query("order") or None
    if order not in (None, "asc", "desc"):
        raise InvalidRequest("order must be asc or desc.")
    cursor = request.query("cursor") or None
    if cursor is None and page > 1:
        skip = (page - 1) * per_page
        if skip > MAX_SKIP:
            raise InvalidRequest(f"page reaches past {MAX_SKIP} items; follow next_cursor instead.")
        scanned = 0
        while skip > 0:
            walked = await listing.page(flt, limit=min(skip, 100), cursor=cursor, order=order, ids_only=True)
            skip -= len(walked.items)
            scanned += walked.scanned
            cursor = walked.next_cursor
            if cursor is None:
                break
            if scanned > MAX_SKIP_SCAN:
                raise InvalidRequest("Reaching that page would read too much of the store; follow next_cursor instead.")
        if skip > 0 or cursor is None:
            empty = Page(items=[], total=None, next_cursor=None, scanned=0)
            return empty, pagination(None, page, per_page)
    found = await listing.page(flt, limit=per_page, cursor=cursor, order=order, ids_only=ids_only)
    block = pagination(found.total, page, per_page, found.next_cursor)
    if request.query("cursor"):  # followed by cursor, `page` stays 1: only the cursor tells what is left
        block["has_more"] = found.next_cursor is not None
    return found, {**block, "scanned": found.scanned}


C = TypeVar("C")
MAX_KEPT = 1_000_000_000  # a purge cursor's count of kept entries: bounds what a forged one asks for


def purge_cursor(raw: str | None, decoder: msgspec.json.Decoder[C], valid: Callable[[C], bool], what: str) -> C | None:
    """The cursor a purge request brings back (the `next_cursor` of the call before), or None;
    400 when it is not one this endpoint made for `what`."""
    if raw is None:
        return None
    try:
        cursor = decoder.decode(raw)
    except msgspec.DecodeError:
        cursor = None
    if cursor is None or not valid(cursor):
        raise InvalidRequest(f"cursor must be the next_cursor of a purge of {what}.")
    return cursor
