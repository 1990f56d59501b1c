"""The test clock behind ``freeze_time`` / ``advance_time``.

While a test context's clock is set, :func:`runtime.timefmt.now_ms` reads it, for everything in
this process that asks what time it is: enqueue (``created_at``, ``delay_ms``, ``scheduled_at``
relative to now), the broker's promotion of due jobs and retries, the retry backoff's due time,
and cron ticks. What it cannot move: Redis' own clock (key expiry, so a unique lock's
``period``), the pools of other processes, and ``asyncio.sleep`` inside a handler.
"""

from __future__ import annotations

import datetime as dt

from runtime import timefmt

TimeLike = str | int | float | dt.datetime
DurationLike = str | int | float | dt.timedelta


class TestClock:
    """A stopped clock; ``advance`` moves it. Installed in ``timefmt`` only once it is set."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._ms: int | None = None

    @property
    def frozen(self) -> bool:
        return self._ms is not None

    def now_ms(self) -> int:
        return timefmt.wall_now_ms() if self._ms is None else self._ms

    def freeze(self, when: TimeLike | None = None) -> int:
        """Stop the clock at `when` (RFC 3339 text, epoch ms, or an aware datetime), else now."""
        self._ms = timefmt.wall_now_ms() if when is None else instant_ms(when)
        timefmt.use_clock(self.now_ms)
        return self._ms

    def advance(self, by: DurationLike) -> int:
        """Move the clock forward by `by` (ISO 8601 or short duration text, a timedelta, or
        seconds); a clock not frozen yet is frozen at the wall time first."""
        delta = duration_ms(by)
        if delta < 0:
            raise ValueError("time only moves forward in a test: advance by a positive duration")
        start = self.now_ms()
        self._ms = start + delta
        timefmt.use_clock(self.now_ms)
        return self._ms

    def release(self) -> None:
        if self._ms is not None:
            self._ms = None
            timefmt.use_clock(None)


def instant_ms(when: TimeLike) -> int:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError("freeze_time needs an aware datetime (with a tzinfo)")
        return round(when.timestamp() * 1000)
    if isinstance(when, str):
        return timefmt.parse_timestamp_ms(when)
    return int(when)


def duration_ms(by: DurationLike) -> int:
    if isinstance(by, dt.timedelta):
        return round(by.total_seconds() * 1000)
    if isinstance(by, str):
        return timefmt.parse_duration_ms(by)
    return round(by * 1000)
