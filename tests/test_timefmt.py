"""Unit tests for runtime.timefmt: RFC 3339 timestamps and ISO 8601 durations."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.timefmt import (
    MAX_MS,
    MIN_MS,
    format_ms,
    now_ms,
    parse_duration_ms,
    parse_timestamp_ms,
    parse_when_ms,
)

# The conformance suite's timestamp regex (spec digest §1.6).
_SPEC_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FEB_12_1030_MS = 1_770_892_200_000  # 2026-02-12T10:30:00Z


def _reference_format(ms: int) -> str:
    """The slow, obviously-correct datetime rendering format_ms must agree with."""
    moment = datetime(1, 1, 1) + timedelta(milliseconds=ms - MIN_MS)
    return moment.isoformat(timespec="milliseconds") + "Z"


# --- now_ms ---------------------------------------------------------------------------


def test_now_ms_is_epoch_milliseconds() -> None:
    before_ms = int(time.time() * 1000)
    value = now_ms()
    after_ms = int(time.time() * 1000)
    assert isinstance(value, int)
    assert before_ms - 1 <= value <= after_ms + 1


# --- format_ms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (_FEB_12_1030_MS, "2026-02-12T10:30:00.000Z"),
        (_FEB_12_1030_MS + 7, "2026-02-12T10:30:00.007Z"),
        (_FEB_12_1030_MS + 86_399_999 - 37_800_000, "2026-02-12T23:59:59.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (MIN_MS, "0001-01-01T00:00:00.000Z"),
        (MAX_MS, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_ms_renders_utc_with_millis_and_z(ms: int, expected: str) -> None:
    assert format_ms(ms) == expected
    assert _SPEC_TIMESTAMP_RE.match(format_ms(ms))


@pytest.mark.parametrize("ms", [MIN_MS - 1, MAX_MS + 1, -(10**20), 10**20])
def test_format_ms_rejects_instants_outside_years_1_to_9999(ms: int) -> None:
    with pytest.raises(ValueError, match="0001-9999"):
        format_ms(ms)


@given(st.integers(min_value=MIN_MS, max_value=MAX_MS))
def test_format_ms_matches_datetime_reference(ms: int) -> None:
    assert format_ms(ms) == _reference_format(ms)


# --- parse_timestamp_ms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("2026-02-12T10:30:00Z", _FEB_12_1030_MS),
        ("2026-02-12T10:30:00.000Z", _FEB_12_1030_MS),
        ("2026-02-12t10:30:00z", _FEB_12_1030_MS),
        ("2026-02-12 10:30:00Z", _FEB_12_1030_MS),
        ("2026-02-12T11:30:00+01:00", _FEB_12_1030_MS),
        ("2026-02-12T05:00:00-05:30", _FEB_12_1030_MS),
        ("2026-02-12T10:30:00-00:00", _FEB_12_1030_MS),
        ("2026-02-12T10:30:00.5Z", _FEB_12_1030_MS + 500),
        ("2026-02-12T10:30:00.12Z", _FEB_12_1030_MS + 120),
        ("2026-02-12T10:30:00.123Z", _FEB_12_1030_MS + 123),
        # Sub-millisecond digits are truncated, never rounded up.
        ("2026-02-12T10:30:00.123999999Z", _FEB_12_1030_MS + 123),
        ("2026-02-12T10:30:00.000000001Z", _FEB_12_1030_MS),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("2099-12-31T23:59:59Z", 4_102_444_799_000),
    ],
)
def test_parse_timestamp_ms_accepts_rfc3339_with_zone(text: str, expected_ms: int) -> None:
    assert parse_timestamp_ms(text) == expected_ms


@pytest.mark.parametrize(
    "text",
    ["2026-02-12T10:30:00", "2026-02-12T10:30:00.123", "2026-02-12 10:30:00"],
)
def test_parse_timestamp_ms_rejects_naive_timestamps(text: str) -> None:
    with pytest.raises(ValueError, match="no timezone"):
        parse_timestamp_ms(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "2026-02-12",
        "10:30:00Z",
        "2026-02-12T10:30Z",
        "2026-2-12T10:30:00Z",
        "2026-02-12T10:30:00.Z",
        "2026-02-12T10:30:00+0100",
        "2026-02-12T10:30:00+01",
        "2026-02-12T10:30:00 Z",
        " 2026-02-12T10:30:00Z",
        "２０２６-02-12T10:30:00Z",
        "+PT2S",
    ],
)
def test_parse_timestamp_ms_rejects_garbage_and_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected an RFC 3339 timestamp with a timezone"):
        parse_timestamp_ms(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2026-02-30T00:00:00Z", "invalid date"),
        ("2025-02-29T00:00:00Z", "invalid date"),
        ("2026-13-01T00:00:00Z", "invalid date"),
        ("2026-00-10T00:00:00Z", "invalid date"),
        ("0000-01-01T00:00:00Z", "invalid date"),
        ("2026-02-12T24:00:00Z", "out-of-range time"),
        ("2026-02-12T10:60:00Z", "out-of-range time"),
        ("2026-02-12T10:30:60Z", "out-of-range time"),
        ("2026-02-12T10:30:00+24:00", "out-of-range offset"),
        ("2026-02-12T10:30:00+01:60", "out-of-range offset"),
        ("0001-01-01T00:00:00+01:00", "outside years 0001-9999"),
        ("9999-12-31T23:59:59-01:00", "outside years 0001-9999"),
    ],
)
def test_parse_timestamp_ms_rejects_out_of_range_fields(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_timestamp_ms(text)


@given(st.integers(min_value=MIN_MS, max_value=MAX_MS))
def test_format_then_parse_round_trips(ms: int) -> None:
    assert parse_timestamp_ms(format_ms(ms)) == ms


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.builds(
            timezone,
            st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
                lambda minutes: timedelta(minutes=minutes)
            ),
        ),
    )
)
def test_parse_timestamp_ms_agrees_with_datetime_for_any_offset(moment: datetime) -> None:
    text = moment.isoformat()
    expected_ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    assert parse_timestamp_ms(text) == expected_ms


# --- parse_duration_ms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("PT1S", 1_000),
        ("PT0.5S", 500),
        ("PT0,25S", 250),
        ("PT0.0009S", 0),
        ("PT1.9999S", 1_999),
        ("PT30S", 30_000),
        ("PT5M", 300_000),
        ("PT2H", 7_200_000),
        ("PT1.5H", 5_400_000),
        ("PT1H30M", 5_400_000),
        ("P1D", 86_400_000),
        ("P1.5D", 129_600_000),
        ("P1W", 7 * 86_400_000),
        ("P1M", 30 * 86_400_000),
        ("P1Y", 365 * 86_400_000),
        ("P1DT2H", 93_600_000),
        (
            "P1Y2M3W4DT5H6M7.5S",
            ((365 + 60 + 21 + 4) * 24 * 3600 + 5 * 3600 + 6 * 60) * 1000 + 7_500,
        ),
        ("PT0S", 0),
        ("pt2s", 2_000),
        ("500ms", 500),
        ("1s", 1_000),
        ("45s", 45_000),
        ("300s", 300_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("2d", 172_800_000),
        ("1h30m", 5_400_000),
        ("1m30s", 90_000),
        ("2h45m30s", 9_930_000),
        ("1.5h", 5_400_000),
        ("1s500ms", 1_500),
    ],
)
def test_parse_duration_ms_accepts_iso8601_and_shorthand(text: str, expected_ms: int) -> None:
    assert parse_duration_ms(text) == expected_ms


def test_parse_duration_ms_months_are_not_minutes() -> None:
    assert parse_duration_ms("P1M") == 30 * 24 * 60 * 60 * 1000
    assert parse_duration_ms("PT1M") == 60 * 1000
    assert parse_duration_ms("1m") == 60 * 1000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected an ISO 8601 duration"),
        ("P", "no components"),
        ("PT", "no components"),
        ("P1DT", "no time components"),
        ("-PT1S", "negative"),
        ("-5s", "negative"),
        ("P-1D", "expected an ISO 8601 duration"),
        ("5", "expected an ISO 8601 duration"),
        ("abc", "expected an ISO 8601 duration"),
        ("1H", "expected an ISO 8601 duration"),
        ("1x", "expected an ISO 8601 duration"),
        ("1 h", "expected an ISO 8601 duration"),
        (" PT1S", "expected an ISO 8601 duration"),
        ("PT1S ", "expected an ISO 8601 duration"),
        ("1.s", "expected an ISO 8601 duration"),
        ("PT1H2S3M", "expected an ISO 8601 duration"),
        ("P1.5DT1H", "only the last component"),
        ("PT0.5M1S", "only the last component"),
        ("P99999999Y", "too large"),
    ],
)
def test_parse_duration_ms_rejects_invalid_with_clear_message(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration_ms(text)


# --- parse_when_ms --------------------------------------------------------------------


def test_parse_when_ms_relative_duration_adds_to_now() -> None:
    assert parse_when_ms("+PT2S", 1_000) == 3_000
    assert parse_when_ms("+PT0.5S", _FEB_12_1030_MS) == _FEB_12_1030_MS + 500
    assert parse_when_ms("+P1D", 0) == 86_400_000


def test_parse_when_ms_absolute_ignores_now() -> None:
    assert parse_when_ms("2026-02-12T10:30:00Z", 123) == _FEB_12_1030_MS
    assert parse_when_ms("2026-02-12T11:30:00+01:00", 123) == _FEB_12_1030_MS


@pytest.mark.parametrize("text", ["+", "+P", "+PT", "+-PT1S", "+xyz"])
def test_parse_when_ms_rejects_bad_relative_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid relative time"):
        parse_when_ms(text, 0)


def test_parse_when_ms_rejects_naive_absolute() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        parse_when_ms("2026-02-12T10:30:00", 0)


def test_parse_when_ms_rejects_result_after_year_9999() -> None:
    with pytest.raises(ValueError, match="after year 9999"):
        parse_when_ms("+P9000Y", _FEB_12_1030_MS)
