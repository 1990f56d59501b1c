"""Timestamps and durations on the wire, as epoch milliseconds inside.

OJS speaks RFC 3339 timestamps and ISO 8601 durations; Redis scores and
Lua scripts speak integer epoch milliseconds.  This module is the only
place that converts between the two, so every part of the broker agrees on
what a client string means.  Everything here is pure (no I/O, no clock
except ``now_ms``).

Rules, and why:

* Emitted timestamps are always UTC with milliseconds and ``Z``
  (``2026-02-12T10:30:00.000Z``), the form the spec asks servers to emit.
* Parsed timestamps MUST carry a zone (``Z`` or ``±hh:mm``): a naive time
  is ambiguous between client and server, so it is rejected rather than
  guessed.  Sub-millisecond digits are truncated (floor), never rounded, so
  a parsed instant never lands after the one the client wrote.
* Durations accept ISO 8601 (``PT0.5S``) and the shorthand the OJS
  examples use (``500ms``, ``5m``, ``1h30m``).  Calendar units have fixed
  lengths (Y = 365 d, M = 30 d, W = 7 d) because a duration is added to an
  instant, not to a calendar date.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from datetime import date

__all__ = [
    "MAX_DURATION_MS",
    "MAX_MS",
    "MIN_MS",
    "format_ms",
    "now_ms",
    "parse_duration_ms",
    "parse_timestamp_ms",
    "parse_when_ms",
]

_MS_PER_S = 1_000
_MS_PER_MIN = 60 * _MS_PER_S
_MS_PER_H = 60 * _MS_PER_MIN
_MS_PER_DAY = 24 * _MS_PER_H
# date.toordinal() of 1970-01-01: converts proleptic Gregorian ordinals to epoch days.
_EPOCH_ORDINAL = 719_163
# The instants format_ms can render: 0001-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z.
MIN_MS = (1 - _EPOCH_ORDINAL) * _MS_PER_DAY
MAX_MS = (date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * _MS_PER_DAY - 1
# Far beyond any sensible delay or interval, yet small enough that callers adding
# it to "now" stay well inside 64-bit integers and Redis scores.
MAX_DURATION_MS = 10_000 * 365 * _MS_PER_DAY

_TIMESTAMP_EXPECTED = (
    "expected an RFC 3339 timestamp with a timezone, "
    "e.g. '2026-02-12T10:30:00Z' or '2026-02-12T10:30:00.5+01:00'"
)
_DURATION_EXPECTED = (
    "expected an ISO 8601 duration such as 'PT30S', 'PT0.5S', 'P1DT2H', "
    "or a shorthand such as '500ms', '30s', '5m', '1h', '2d', '1h30m'"
)

# Precomputed pieces of the clock part: format_ms runs on every response, and
# gluing table entries is ~9x faster than datetime.strftime.
_HH_MM = tuple(f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SS = tuple(f"{s:02d}." for s in range(60))
_MMM_Z = tuple(f"{ms:03d}Z" for ms in range(1000))

_TIMESTAMP_RE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?:(?P<zulu>[Zz])|(?P<sign>[+-])(?P<off_h>[0-9]{2}):(?P<off_m>[0-9]{2}))?"
)
_ISO_DURATION_RE = re.compile(
    r"P(?:(?P<Y>[0-9]+(?:[.,][0-9]+)?)Y)?(?:(?P<MO>[0-9]+(?:[.,][0-9]+)?)M)?"
    r"(?:(?P<W>[0-9]+(?:[.,][0-9]+)?)W)?(?:(?P<D>[0-9]+(?:[.,][0-9]+)?)D)?"
    r"(?:(?P<T>T)(?:(?P<H>[0-9]+(?:[.,][0-9]+)?)H)?(?:(?P<MI>[0-9]+(?:[.,][0-9]+)?)M)?"
    r"(?:(?P<S>[0-9]+(?:[.,][0-9]+)?)S)?)?",
    re.IGNORECASE,
)
_ISO_UNIT_MS = {
    "Y": 365 * _MS_PER_DAY,
    "MO": 30 * _MS_PER_DAY,
    "W": 7 * _MS_PER_DAY,
    "D": _MS_PER_DAY,
    "H": _MS_PER_H,
    "MI": _MS_PER_MIN,
    "S": _MS_PER_S,
}
_SHORT_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SHORT_DURATION_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_SHORT_UNIT_MS = {"ms": 1, "s": _MS_PER_S, "m": _MS_PER_MIN, "h": _MS_PER_H, "d": _MS_PER_DAY}


def wall_now_ms() -> int:
    """Wall-clock epoch milliseconds: the unit of every Redis score and Lua ``now_ms``."""
    return time.time_ns() // 1_000_000


# "Now" for the broker, the client and the cron loop. A plain module attribute, not a wrapper,
# so the hot paths pay nothing for it; every caller reads it as ``timefmt.now_ms()`` at call
# time (never a copy imported by name), which is what lets `use_clock` move it.
now_ms: Callable[[], int] = wall_now_ms


def use_clock(clock: Callable[[], int] | None) -> None:
    """Replace ``now_ms`` for every caller in this process (the testing kit's time control,
    :mod:`runtime.testing`); ``None`` restores the wall clock."""
    global now_ms
    now_ms = clock or wall_now_ms


def format_ms(ms: int) -> str:
    """Render epoch ms as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Hot path (every job in every response), hence table lookups and a cached
    date prefix instead of datetime.  Raises ValueError outside years 1-9999.
    """
    days, ms_of_day = divmod(ms, _MS_PER_DAY)
    return (
        f"{_date_prefix(days)}{_HH_MM[ms_of_day // _MS_PER_MIN]}"
        f"{_SS[ms_of_day // _MS_PER_S % 60]}{_MMM_Z[ms_of_day % _MS_PER_S]}"
    )


@functools.lru_cache(maxsize=8)
def _date_prefix(epoch_days: int) -> str:
    """``YYYY-MM-DD`` for an epoch day; cached because consecutive calls share the day."""
    try:
        return date.fromordinal(epoch_days + _EPOCH_ORDINAL).isoformat()
    except (ValueError, OverflowError):
        raise ValueError(
            f"epoch day {epoch_days} is outside the RFC 3339 range (years 0001-9999)"
        ) from None


def parse_timestamp_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp that names its zone into epoch ms (UTC).

    Naive timestamps are rejected on purpose: the client's zone is unknown
    and the spec requires it to be preserved, so we refuse to guess.
    """
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid timestamp {text!r}: {_TIMESTAMP_EXPECTED}")
    if match["zulu"] is None and match["sign"] is None:
        raise ValueError(f"timestamp {text!r} has no timezone: {_TIMESTAMP_EXPECTED}")
    local_ms = _local_ms(text, match)
    result_ms = local_ms - _offset_ms(text, match)
    if not MIN_MS <= result_ms <= MAX_MS:
        raise ValueError(f"timestamp {text!r} is outside years 0001-9999 once converted to UTC")
    return result_ms


def _local_ms(text: str, match: re.Match[str]) -> int:
    """Epoch ms of the written wall-clock fields, validating each range."""
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(
            f"timestamp {text!r} has an out-of-range time (hour 00-23, minute 00-59, "
            "second 00-59; leap seconds are not supported)"
        )
    try:
        ordinal = date(int(match["year"]), int(match["month"]), int(match["day"])).toordinal()
    except ValueError as err:
        raise ValueError(f"timestamp {text!r} has an invalid date: {err}") from None
    # Truncate to ms: ".5" -> 500, ".123456789" -> 123.
    millis = int((match["fraction"] or "0")[:3].ljust(3, "0"))
    return (
        (ordinal - _EPOCH_ORDINAL) * _MS_PER_DAY
        + hour * _MS_PER_H
        + minute * _MS_PER_MIN
        + second * _MS_PER_S
        + millis
    )


def _offset_ms(text: str, match: re.Match[str]) -> int:
    """The zone's offset from UTC in ms (``Z`` and ``-00:00`` are both UTC)."""
    if match["zulu"] is not None:
        return 0
    off_h, off_m = int(match["off_h"]), int(match["off_m"])
    if off_h > 23 or off_m > 59:
        raise ValueError(f"timestamp {text!r} has an out-of-range offset (-23:59..+23:59)")
    offset_ms = off_h * _MS_PER_H + off_m * _MS_PER_MIN
    return -offset_ms if match["sign"] == "-" else offset_ms


def parse_duration_ms(text: str) -> int:
    """Parse an ISO 8601 or shorthand duration into whole milliseconds.

    Sub-millisecond remainders are truncated (per component in the
    shorthand form, which may carry several fractions).  Negative, empty and
    unit-less values are errors: a retry interval or delay of "-5" or "5"
    is a client mistake worth reporting, not something to guess at.
    """
    return _parse_duration_ms_cached(text)


# Clients repeat the same few strings ("PT1S", "PT5M") on every enqueue; a hit
# costs ~0.1 us against ~10 us for the regex.  Errors are not cached.
@functools.lru_cache(maxsize=256)
def _parse_duration_ms_cached(text: str) -> int:
    if text.startswith("-"):
        raise ValueError(f"duration {text!r} is negative: durations must be >= 0")
    if text[:1] in ("P", "p"):
        total_ms = _iso_duration(text)
    elif _SHORT_DURATION_RE.fullmatch(text):
        total_ms = _short_duration(text)
    else:
        raise ValueError(f"invalid duration {text!r}: {_DURATION_EXPECTED}")
    if total_ms > MAX_DURATION_MS:
        raise ValueError(f"duration {text!r} is too large (at most 10000 years)")
    return total_ms


def _iso_duration(text: str) -> int:
    """Sum of ``PnYnMnWnDTnHnMnS`` components; only the last may be fractional."""
    match = _ISO_DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: {_DURATION_EXPECTED}")
    parts = [(unit, match[unit]) for unit in _ISO_UNIT_MS if match[unit] is not None]
    if not parts:
        raise ValueError(f"duration {text!r} has no components: {_DURATION_EXPECTED}")
    if match["T"] and not any(unit in ("H", "MI", "S") for unit, _ in parts):
        raise ValueError(f"duration {text!r} has a 'T' with no time components after it")
    if any(_is_fractional(value) for _, value in parts[:-1]):
        raise ValueError(f"duration {text!r}: only the last component may have a fraction")
    return sum(_component_ms(value, _ISO_UNIT_MS[unit]) for unit, value in parts)


def _short_duration(text: str) -> int:
    """Sum of Go-style ``<number><unit>`` parts, e.g. ``1h30m`` or ``1.5s``."""
    return sum(
        _component_ms(number, _SHORT_UNIT_MS[unit]) for number, unit in _SHORT_PART_RE.findall(text)
    )


def _is_fractional(number: str) -> bool:
    return "." in number or "," in number


def _component_ms(number: str, unit_ms: int) -> int:
    """Whole ms in ``number`` units, truncated; exact integer maths, no floats.

    ``,`` is accepted as ISO 8601's alternative decimal mark.
    """
    whole, _, frac = number.replace(",", ".").partition(".")
    scale: int = 10 ** len(frac)  # int ** int is typed Any; pin it
    return int(whole + frac) * unit_ms // scale


def parse_when_ms(text: str, now_ms: int) -> int:
    """Resolve a scheduling instant: absolute RFC 3339, or ``+<duration>`` from ``now_ms``.

    The relative form (``+PT2S``) lets clients schedule without trusting
    their own clock; ``now_ms`` is a parameter so callers decide which
    "now" (request arrival) the offset is measured from.
    """
    if not text.startswith("+"):
        return parse_timestamp_ms(text)
    try:
        delta_ms = parse_duration_ms(text[1:])
    except ValueError as err:
        raise ValueError(
            f"invalid relative time {text!r}: expected '+' followed by an ISO 8601 "
            f"duration such as '+PT2S' ({err})"
        ) from None
    result_ms = now_ms + delta_ms
    if result_ms > MAX_MS:
        raise ValueError(f"relative time {text!r} lands after year 9999")
    return result_ms


def format_duration_ms(ms: int) -> str:
    """Whole milliseconds as an ISO 8601 duration (PT1H, PT1.5S, P1D): the inverse of
    parse_duration_ms for what it writes."""
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1_000)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if millis:
        clock += f"{seconds}.{millis:03d}".rstrip("0") + "S"
    elif seconds:
        clock += f"{seconds}S"
    if clock:
        text += "T" + clock
    return text if text != "P" else "PT0S"
