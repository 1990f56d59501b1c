"""Cron expressions (OJS dialect) evaluated in an IANA timezone.

croniter does the calendar matching, but only ever on *naive local wall
times*: its own DST handling is wrong for OJS (on the spring-forward day it
fires ``30 2 * * *`` at 03:00, and on the fall-back day it fires
``30 1 * * *`` twice).  This module maps each wall-clock candidate to UTC
itself, with two rules from ojs-cron §5.2:

* a wall time that does not exist (spring forward) does not fire;
* a wall time that occurs twice (fall back) fires once, at its first
  occurrence.  This applies to every field, so ``*/15 * * * *`` also stays
  quiet during the repeated hour instead of firing each slot twice.

croniter is also more lenient than the spec (reversed ranges wrap around,
``R`` picks a random minute, ``?`` and a seventh "year" field are accepted),
so every field is validated against the OJS grammar here and handed to
croniter in a normalised, numeric form.  When both day-of-month and
day-of-week are restricted they are ORed (Vixie/POSIX), which this module
does itself by evaluating the two halves separately: croniter silently
switches to AND as soon as ``W``, ``L`` or ``#`` is involved.
"""

from __future__ import annotations

import copy
import functools
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

# croniter ships no type information; "unused-ignore" keeps this line clean where stubs exist.
from croniter import (  # type: ignore[import-untyped, unused-ignore]
    CroniterBadDateError,
    CroniterError,
    croniter,
)

from runtime.timefmt import parse_duration_ms

__all__ = ["CronSchedule", "parse_cron"]

_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# Search restarts one second before a whole-second boundary: croniter returns
# times strictly after its start, at (at least) one-second granularity.
_ONE_S = timedelta(seconds=1)
_MIN_EVERY_MS = 1_000
# A schedule only loops on DST gaps (one per transition), so this is generous.
_MAX_GAP_SKIPS = 100
# Any fixed instant works for the "does it ever fire?" probe at parse time.
_PROBE_AFTER_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

_SPECIALS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELD_SEP_RE = re.compile(r"[ \t]+")
_VALUE = r"(?:[0-9]+|[a-z]{3})"
_ITEM_RE = re.compile(rf"(?P<base>\*|{_VALUE}(?:-{_VALUE})?)(?:/(?P<step>[0-9]+))?")
_DOM_W_RE = re.compile(r"([0-9]+)w")
_DOW_NTH_RE = re.compile(rf"({_VALUE})#([0-9]+)")
_DOW_LAST_RE = re.compile(rf"({_VALUE})l|l({_VALUE})")
_SYNTAX_HELP = (
    "use numbers or names, '*', ',', '-', '/'; 'L'/'nW' in day-of-month; 'n#k'/'nL' in day-of-week"
)


@dataclass(frozen=True)
class _FieldSpec:
    """Bounds and names of one cron field, for validation and messages."""

    label: str
    low: int
    high: int
    names: dict[str, int] | None = None


_SECOND = _FieldSpec("second", 0, 59)
_MINUTE = _FieldSpec("minute", 0, 59)
_HOUR = _FieldSpec("hour", 0, 23)
_DOM = _FieldSpec("day-of-month", 1, 31)
_MONTH = _FieldSpec("month", 1, 12, _MONTHS)
_DOW = _FieldSpec("day-of-week", 0, 7, _WEEKDAYS)


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression bound to an IANA zone; answers "when next?".

    Construct with ``parse_cron`` (or directly: construction validates).
    ``@every <duration>`` schedules are anchored on the instant passed to
    ``next_after_ms``: the scheduler passes the registration time or the
    last trigger time, so the result is that anchor plus the interval (it
    can be in the past if the anchor is stale; the caller decides whether
    to catch up).
    """

    expression: str
    timezone: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)
    _every_ms: int | None = field(init=False, repr=False, compare=False)
    # One croniter per OR-half; copied per call since croniter is stateful.
    _templates: tuple[croniter, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _load_zone(self.timezone))
        every_ms, templates = _compile(self.expression)
        object.__setattr__(self, "_every_ms", every_ms)
        object.__setattr__(self, "_templates", templates)
        if every_ms is None:
            self._probe_fires()

    def next_after_ms(self, after_ms: int) -> int:
        """The first fire time strictly after ``after_ms`` (epoch ms, UTC)."""
        if self._every_ms is not None:
            return after_ms + self._every_ms
        after_local = (_EPOCH_UTC + after_ms * _ONE_MS).astimezone(self._zone)
        wall = _search_start(after_local, after_ms, self._zone)
        for _ in range(_MAX_GAP_SKIPS):
            candidate = self._next_wall(wall)
            instant_ms = _first_instant_ms(candidate, self._zone)
            if instant_ms is None:  # inside a spring-forward gap: skip the gap
                wall = _gap_end_wall(candidate, self._zone) - _ONE_S
            elif instant_ms > after_ms:
                return instant_ms
            else:
                wall = candidate
        raise ValueError(f"cron {self.expression!r} found no fire time after {after_ms} ms")

    def _next_wall(self, wall: datetime) -> datetime:
        """Earliest naive local time after ``wall`` matched by any OR-half."""
        found: list[datetime] = []
        for template in self._templates:
            try:
                found.append(copy.copy(template).get_next(datetime, start_time=wall))
            except CroniterBadDateError:
                continue  # this half never matches (e.g. Feb 30); the other may
        if not found:
            raise ValueError(f"cron {self.expression!r} never fires (searched 50 years)")
        return min(found)

    def _probe_fires(self) -> None:
        """Reject expressions that never fire, e.g. ``0 0 30 2 *``, at registration."""
        try:
            self.next_after_ms(_PROBE_AFTER_MS)
        except ValueError:
            raise ValueError(
                f"invalid cron expression {self.expression!r}: it never fires "
                "(no matching date exists)"
            ) from None


def parse_cron(expression: str, timezone: str = "UTC") -> CronSchedule:
    """Validate ``expression`` and ``timezone``; raise ValueError naming the problem."""
    return CronSchedule(expression, timezone)


# --- timezone -------------------------------------------------------------------------


def _load_zone(name: str) -> tzinfo:
    """Load an IANA ``Area/Location`` zone (or ``UTC``).

    Offsets (``+05:00``, ``UTC+5``, ``Etc/GMT-5``) and abbreviations
    (``EST``, ``CET``) are refused: they carry no DST rules, so a schedule
    written against them drifts by an hour twice a year (ojs-cron §5.1).
    """
    expected = "expected an IANA timezone name such as 'UTC', 'America/New_York', 'Asia/Tokyo'"
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid timezone {name!r}: {expected}")
    if name != "UTC" and ("/" not in name or name.startswith(("Etc/GMT+", "Etc/GMT-"))):
        raise ValueError(
            f"invalid timezone {name!r}: fixed offsets and abbreviations are not allowed; "
            f"{expected}"
        )
    if name not in _iana_names():
        raise ValueError(f"unknown timezone {name!r}: {expected}")
    return zoneinfo.ZoneInfo(name)


@functools.lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    """The installed tz database names (scanning it takes ~70 ms, so once)."""
    return frozenset(zoneinfo.available_timezones())


# --- expression -> croniter templates -------------------------------------------------


def _compile(expression: str) -> tuple[int | None, tuple[croniter, ...]]:
    """Return ``(every_ms, ())`` for ``@every`` or ``(None, croniter templates)``."""
    text = expression.strip() if isinstance(expression, str) else ""
    if not text:
        raise ValueError("cron expression is empty")
    if text.startswith("@"):
        every_ms = _parse_special(text)
        if every_ms is not None:
            return every_ms, ()
        text = _SPECIALS[text.lower()]
    fields = _normalise_fields(expression, _FIELD_SEP_RE.split(text))
    return None, _templates(expression, fields)


def _parse_special(text: str) -> int | None:
    """Interval in ms for ``@every <dur>``; None for a known ``@daily``-style alias."""
    word, *rest = _FIELD_SEP_RE.split(text, maxsplit=1)
    if word.lower() != "@every":
        if text.lower() not in _SPECIALS:
            raise ValueError(
                f"unknown special cron expression {text!r}: expected one of "
                f"{', '.join(_SPECIALS)} or '@every <duration>'"
            )
        return None
    try:
        every_ms = parse_duration_ms(rest[0] if rest else "")
    except ValueError as err:
        raise ValueError(f"invalid '@every' interval in {text!r}: {err}") from None
    if every_ms < _MIN_EVERY_MS:
        raise ValueError(f"'@every' interval in {text!r} must be at least 1s")
    return every_ms


def _normalise_fields(expression: str, tokens: list[str]) -> list[str]:
    """Validate 5 or 6 fields and rewrite them in croniter's numeric syntax."""
    specs: tuple[_FieldSpec, ...]
    if len(tokens) == 5:
        specs = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    elif len(tokens) == 6:
        specs = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    else:
        raise ValueError(
            f"invalid cron expression {expression!r}: expected 5 fields (minute hour "
            f"day-of-month month day-of-week) or 6 (leading seconds), got {len(tokens)}"
        )
    try:
        return [
            _normalise_field(token.lower(), spec) for token, spec in zip(tokens, specs, strict=True)
        ]
    except ValueError as err:
        raise ValueError(f"invalid cron expression {expression!r}: {err}") from None


def _normalise_field(token: str, spec: _FieldSpec) -> str:
    if spec is _DOM and (weekday := _DOM_W_RE.fullmatch(token)) is not None:
        return f"{_value(weekday[1], spec)}W"  # nearest weekday: only valid alone
    items = [_normalise_item(item, spec) for item in token.split(",")]
    if spec is _DOW and len({"#" in item or "L" in item for item in items}) > 1:
        raise ValueError(f"{spec.label}: cannot mix 'L'/'#' items with plain values ({token!r})")
    return ",".join(items)


def _normalise_item(item: str, spec: _FieldSpec) -> str:
    """One list item: ``*``, ``a``, ``a-b``, each with optional ``/step``, or L/#."""
    if spec is _DOM and item == "l":
        return "L"
    if spec is _DOM and _DOM_W_RE.fullmatch(item):
        raise ValueError(f"{spec.label}: 'W' must be used alone, not in a list ({item!r})")
    if spec is _DOW:
        special = _normalise_dow_special(item)
        if special is not None:
            return special
    match = _ITEM_RE.fullmatch(item)
    if match is None:
        raise ValueError(f"{spec.label} field has malformed item {item!r}: {_SYNTAX_HELP}")
    step = match["step"]
    if step is not None and int(step) == 0:
        raise ValueError(f"{spec.label}: step must be at least 1 (got {item!r})")
    base = match["base"] if match["base"] == "*" else _normalise_range(match["base"], spec)
    return base if step is None else f"{base}/{int(step)}"


def _normalise_range(text: str, spec: _FieldSpec) -> str:
    start_text, dash, end_text = text.partition("-")
    start = _value(start_text, spec)
    if not dash:
        return str(start)
    end = _value(end_text, spec)
    if spec is _DOW and end_text == "sun" and start > 0:
        end = 7  # so "SAT-SUN" means 6-7, as a reader expects, not a reversed 6-0
    if start > end:
        raise ValueError(f"{spec.label}: malformed range {text!r} (start is after end)")
    return f"{start}-{end}"


def _normalise_dow_special(item: str) -> str | None:
    """``n#k`` (k-th weekday n) and ``nL``/``Ln`` (last weekday n), else None."""
    nth = _DOW_NTH_RE.fullmatch(item)
    if nth is not None:
        week = int(nth[2])
        if not 1 <= week <= 5:
            raise ValueError(f"day-of-week: '#' occurrence must be 1-5 (got {item!r})")
        return f"{_value(nth[1], _DOW) % 7}#{week}"
    last = _DOW_LAST_RE.fullmatch(item)
    if last is not None:
        return f"L{_value(last[1] or last[2], _DOW) % 7}"
    return None


def _value(text: str, spec: _FieldSpec) -> int:
    """A number or (for month/day-of-week) a three-letter name, range-checked."""
    if text.isdigit():
        number = int(text)
    elif spec.names is not None and text in spec.names:
        number = spec.names[text]
    else:
        raise ValueError(f"{spec.label}: {text!r} is not a valid value ({_SYNTAX_HELP})")
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{spec.label}: value {number} out of range {spec.low}-{spec.high}")
    return number


def _templates(expression: str, fields: list[str]) -> tuple[croniter, ...]:
    """croniter objects for the schedule; two of them when day fields are ORed."""
    dom_at, dow_at = len(fields) - 3, len(fields) - 1
    if fields[dom_at] != "*" and fields[dow_at] != "*":
        dom_half = [*fields[:dow_at], "*"]
        dow_half = [*fields[:dom_at], "*", *fields[dom_at + 1 :]]
        variants = [dom_half, dow_half]
    else:
        variants = [fields]
    start = datetime(2000, 1, 1)
    try:
        return tuple(
            croniter(" ".join(v), start, second_at_beginning=len(v) == 6) for v in variants
        )
    except CroniterError as err:
        raise ValueError(f"invalid cron expression {expression!r}: {err}") from None


# --- wall time <-> UTC ----------------------------------------------------------------


def _search_start(after_local: datetime, after_ms: int, zone: tzinfo) -> datetime:
    """Naive wall time to search from.

    If ``after`` lies in the second pass of a repeated (fall-back) hour, every
    wall time left in that hour already fired on its first pass, so jump to
    the end of the repetition.
    """
    wall = after_local.replace(tzinfo=None)
    if after_local.fold == 0:
        return wall
    first_offset = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second_offset = after_local.utcoffset()
    if first_offset is None or second_offset is None or first_offset == second_offset:
        return wall
    after_s = after_ms // 1000
    fold_s = int((first_offset - second_offset).total_seconds())
    change_s = _transition_s(after_s - fold_s - 1, after_s, zone)
    return (_EPOCH_UTC + timedelta(seconds=change_s) + first_offset).replace(tzinfo=None) - _ONE_S


def _first_instant_ms(wall: datetime, zone: tzinfo) -> int | None:
    """Epoch ms of the first occurrence of ``wall`` in ``zone``; None if it never occurs."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return (instant - _EPOCH_UTC) // _ONE_MS


def _gap_end_wall(wall: datetime, zone: tzinfo) -> datetime:
    """First existing naive wall time after the spring-forward gap containing ``wall``."""
    # PEP 495: inside a gap, fold=0 uses the offset before the change, fold=1 after.
    before = wall.replace(tzinfo=zone, fold=0)
    after = wall.replace(tzinfo=zone, fold=1)
    low_s = int((after - _EPOCH_UTC).total_seconds()) - 1
    high_s = int((before - _EPOCH_UTC).total_seconds()) + 1
    change_s = _transition_s(low_s, high_s, zone)
    return (_EPOCH_UTC + timedelta(seconds=change_s)).astimezone(zone).replace(tzinfo=None)


def _transition_s(low_s: int, high_s: int, zone: tzinfo) -> int:
    """Smallest second in (low_s, high_s] already on high_s's UTC offset (bisection)."""
    target = _offset_at(high_s, zone)
    while high_s - low_s > 1:
        mid_s = (low_s + high_s) // 2
        if _offset_at(mid_s, zone) == target:
            high_s = mid_s
        else:
            low_s = mid_s
    return high_s


def _offset_at(epoch_s: int, zone: tzinfo) -> timedelta | None:
    return (_EPOCH_UTC + timedelta(seconds=epoch_s)).astimezone(zone).utcoffset()
