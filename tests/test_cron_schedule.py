"""Unit tests for runtime.cron_schedule: OJS cron dialect, timezones and DST."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.cron_schedule import CronSchedule, parse_cron
from runtime.timefmt import format_ms, parse_timestamp_ms

NEW_YORK = "America/New_York"
_MINUTE_MS = 60_000


def _ms(text: str) -> int:
    return parse_timestamp_ms(text)


def _runs(schedule: CronSchedule, after: str, count: int) -> list[str]:
    """The next ``count`` fire times after ``after``, as RFC 3339 strings."""
    fire_ms = _ms(after)
    out: list[str] = []
    for _ in range(count):
        fire_ms = schedule.next_after_ms(fire_ms)
        out.append(format_ms(fire_ms))
    return out


def _fires_between(schedule: CronSchedule, start: str, end: str) -> list[str]:
    """Every fire time in (start, end]."""
    fire_ms, end_ms = _ms(start), _ms(end)
    out: list[str] = []
    while (fire_ms := schedule.next_after_ms(fire_ms)) <= end_ms:
        out.append(format_ms(fire_ms))
    return out


# --- the basics -----------------------------------------------------------------------


def test_next_after_ms_is_strictly_after() -> None:
    every_minute = parse_cron("* * * * *")
    assert every_minute.next_after_ms(_ms("2026-02-12T10:30:00Z")) == _ms("2026-02-12T10:31:00Z")
    assert every_minute.next_after_ms(_ms("2026-02-12T10:30:59.999Z")) == _ms(
        "2026-02-12T10:31:00Z"
    )
    assert every_minute.next_after_ms(_ms("2026-02-12T10:29:59.999Z")) == _ms(
        "2026-02-12T10:30:00Z"
    )


def test_parse_cron_defaults_to_utc() -> None:
    schedule = parse_cron("0 9 * * *")
    assert schedule.timezone == "UTC"
    assert _runs(schedule, "2026-02-12T10:30:00Z", 1) == ["2026-02-13T09:00:00.000Z"]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2026-02-12T10:31:00Z", ["10:45", "11:00", "11:15"]),
        ("5,35 * * * *", "2026-02-12T10:31:00Z", ["10:35", "11:05", "11:35"]),
        ("0-2 11 * * *", "2026-02-12T10:31:00Z", ["11:00", "11:01", "11:02"]),
        ("10-50/20 * * * *", "2026-02-12T10:31:00Z", ["10:50", "11:10", "11:30"]),
        ("40/10 * * * *", "2026-02-12T10:31:00Z", ["10:40", "10:50", "11:40"]),
        ("0 */6 * * *", "2026-02-12T10:31:00Z", ["12:00", "18:00", "00:00"]),
    ],
)
def test_standard_operators(expression: str, after: str, expected: list[str]) -> None:
    runs = _runs(parse_cron(expression), after, len(expected))
    assert [run[11:16] for run in runs] == expected


def test_six_fields_mean_leading_seconds() -> None:
    schedule = parse_cron("*/20 30 10 * * *")
    assert _runs(schedule, "2026-02-12T10:30:00Z", 3) == [
        "2026-02-12T10:30:20.000Z",
        "2026-02-12T10:30:40.000Z",
        "2026-02-13T10:30:00.000Z",
    ]


def test_five_fields_fire_at_second_zero() -> None:
    assert _runs(parse_cron("30 10 * * *"), "2026-02-12T10:30:00.001Z", 1) == [
        "2026-02-13T10:30:00.000Z"
    ]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 0 1 JAN *", "2026-02-12T00:00:00Z", "2027-01-01T00:00:00.000Z"),
        ("0 0 1 jan *", "2026-02-12T00:00:00Z", "2027-01-01T00:00:00.000Z"),
        ("0 0 1 Mar-May *", "2026-02-12T00:00:00Z", "2026-03-01T00:00:00.000Z"),
        ("0 0 * * MON", "2026-02-12T00:00:00Z", "2026-02-16T00:00:00.000Z"),
        ("0 0 * * mon", "2026-02-12T00:00:00Z", "2026-02-16T00:00:00.000Z"),
        ("0 0 * * Sat-Sun", "2026-02-12T00:00:00Z", "2026-02-14T00:00:00.000Z"),
    ],
)
def test_month_and_weekday_names_are_case_insensitive(
    expression: str, after: str, expected: str
) -> None:
    assert _runs(parse_cron(expression), after, 1) == [expected]


@pytest.mark.parametrize("sunday", ["0", "7", "SUN", "sun"])
def test_day_of_week_zero_and_seven_are_sunday(sunday: str) -> None:
    # 2026-02-12 is a Thursday; the next Sunday is the 15th.
    assert _runs(parse_cron(f"0 0 * * {sunday}"), "2026-02-12T00:00:00Z", 2) == [
        "2026-02-15T00:00:00.000Z",
        "2026-02-22T00:00:00.000Z",
    ]


def test_day_of_week_range_ending_in_seven_includes_sunday() -> None:
    runs = _runs(parse_cron("0 0 * * 5-7"), "2026-02-12T00:00:00Z", 3)
    assert runs == [
        "2026-02-13T00:00:00.000Z",
        "2026-02-14T00:00:00.000Z",
        "2026-02-15T00:00:00.000Z",
    ]


# --- special expressions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("special", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_special_expressions_match_their_equivalents(special: str, equivalent: str) -> None:
    after = "2026-02-12T10:30:00Z"
    assert _runs(parse_cron(special), after, 3) == _runs(parse_cron(equivalent), after, 3)
    assert parse_cron(special).expression == special


@pytest.mark.parametrize(
    ("expression", "interval_ms"),
    [
        ("@every 45s", 45_000),
        ("@every 1s", 1_000),
        ("@every 30m", 1_800_000),
        ("@every 1h30m", 5_400_000),
        ("@every 2h45m30s", 9_930_000),
    ],
)
def test_every_is_anchored_on_the_given_instant(expression: str, interval_ms: int) -> None:
    schedule = parse_cron(expression, NEW_YORK)
    anchor_ms = _ms("2026-02-12T10:30:00.123Z")
    assert schedule.next_after_ms(anchor_ms) == anchor_ms + interval_ms
    # Not aligned to the clock, unlike */N: the anchor's odd milliseconds are kept.
    assert schedule.next_after_ms(anchor_ms + interval_ms) == anchor_ms + 2 * interval_ms


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("@every 500ms", "at least 1s"),
        ("@every 0s", "at least 1s"),
        ("@every", "invalid '@every' interval"),
        ("@every soon", "invalid '@every' interval"),
        ("@every -5m", "invalid '@every' interval"),
        ("@fortnightly", "unknown special cron expression"),
        ("@daily 5", "unknown special cron expression"),
    ],
)
def test_bad_special_expressions_are_rejected(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cron(expression)


# --- L, W, # and Vixie OR -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # Last day of the month, leap years included.
        ("0 0 L * *", "2026-01-31T00:00:00Z", ["2026-02-28", "2026-03-31"]),
        ("0 0 L 2 *", "2027-03-01T00:00:00Z", ["2028-02-29", "2029-02-28"]),
        # Nearest weekday to the 15th (2026-02-15 is a Sunday -> Monday the 16th).
        ("0 0 15W * *", "2026-01-16T00:00:00Z", ["2026-02-16", "2026-03-16"]),
        # Third Friday.
        ("0 0 * * 5#3", "2026-01-01T00:00:00Z", ["2026-01-16", "2026-02-20"]),
        ("0 0 * * FRI#3", "2026-01-01T00:00:00Z", ["2026-01-16", "2026-02-20"]),
        # Last Friday, Quartz (5L) and croniter (L5) spellings.
        ("0 0 * * 5L", "2026-01-01T00:00:00Z", ["2026-01-30", "2026-02-27"]),
        ("0 0 * * L5", "2026-01-01T00:00:00Z", ["2026-01-30", "2026-02-27"]),
        ("0 0 * * 7#2", "2026-01-01T00:00:00Z", ["2026-01-11", "2026-02-08"]),
    ],
)
def test_last_weekday_and_nth_operators(expression: str, after: str, expected: list[str]) -> None:
    runs = _runs(parse_cron(expression), after, len(expected))
    assert [run[:10] for run in runs] == expected


def test_restricted_dom_and_dow_are_ored_vixie_style() -> None:
    # The 13th OR any Friday (2026-02-12 is a Thursday).
    runs = _runs(parse_cron("0 0 13 * 5"), "2026-02-12T00:00:00Z", 4)
    assert [run[:10] for run in runs] == ["2026-02-13", "2026-02-20", "2026-02-27", "2026-03-06"]
    runs = _runs(parse_cron("0 0 13 * 1"), "2026-02-12T00:00:00Z", 3)
    assert [run[:10] for run in runs] == ["2026-02-13", "2026-02-16", "2026-02-23"]


def test_or_semantics_also_hold_with_hash_and_w() -> None:
    # croniter alone ANDs these (and finds nothing for "1 * 5#3").
    runs = _runs(parse_cron("0 0 1 * 5#3"), "2026-01-01T00:00:00Z", 4)
    assert [run[:10] for run in runs] == ["2026-01-16", "2026-02-01", "2026-02-20", "2026-03-01"]
    runs = _runs(parse_cron("0 0 15W * MON"), "2026-01-01T00:00:00Z", 4)
    assert [run[:10] for run in runs] == ["2026-01-05", "2026-01-12", "2026-01-15", "2026-01-19"]


def test_or_with_an_impossible_dom_still_fires_on_the_weekday() -> None:
    runs = _runs(parse_cron("0 0 30 2 MON"), "2026-02-12T00:00:00Z", 2)
    assert [run[:10] for run in runs] == ["2026-02-16", "2026-02-23"]


def test_only_dow_restricted_uses_dow_alone() -> None:
    runs = _runs(parse_cron("0 0 * * 1-5"), "2026-02-13T00:00:00Z", 2)
    assert [run[:10] for run in runs] == ["2026-02-16", "2026-02-17"]


# --- invalid expressions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0 0 0 0 0 0 0", "got 7"),
        ("0 0 1 1 * * 2026", "got 7"),
        ("* * * *", "got 4"),
        ("not a valid cron", "got 4"),
        ("not a valid cron at all", "not a valid value"),
        ("99 25 32 13 8", "minute: value 99 out of range 0-59"),
        ("0 25 * * *", "hour: value 25 out of range 0-23"),
        ("0 0 32 * *", "day-of-month: value 32 out of range 1-31"),
        ("0 0 0 * *", "day-of-month: value 0 out of range 1-31"),
        ("0 0 * 13 *", "month: value 13 out of range 1-12"),
        ("0 0 * * 8", "day-of-week: value 8 out of range 0-7"),
        ("60 * * * * *", "second: value 60 out of range 0-59"),
        ("*/0 * * * *", "step must be at least 1"),
        ("0 0 1-31/0 * *", "step must be at least 1"),
        ("5-1 * * * *", "malformed range"),
        ("0 0 * * FRI-MON", "malformed range"),
        ("1- * * * *", "malformed item"),
        ("-5 * * * *", "malformed item"),
        ("1-2-3 * * * *", "malformed item"),
        ("1,,2 * * * *", "malformed item"),
        ("*/5/2 * * * *", "malformed item"),
        ("1.5 * * * *", "malformed item"),
        ("０ * * * *", "malformed item"),
        ("0 0 * FOO *", "not a valid value"),
        ("0 0 * * MON-FOO", "not a valid value"),
        ("JAN * * * *", "not a valid value"),
        # croniter accepts these; the OJS dialect does not.
        ("R * * * *", "malformed item"),
        ("H * * * *", "malformed item"),
        ("0 0 ? * *", "malformed item"),
        ("L * * * *", "malformed item"),
        ("0 0 * * L", "malformed item"),
        ("0 0 1W,2 * *", "'W' must be used alone"),
        ("0 0 0W * *", "out of range 1-31"),
        ("0 0 * * 1#6", "occurrence must be 1-5"),
        ("0 0 * * 1#0", "occurrence must be 1-5"),
        ("0 0 * * L5,1", "cannot mix"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_invalid_expressions_are_rejected(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cron(expression)


def test_rejection_message_names_the_expression() -> None:
    with pytest.raises(ValueError, match=r"invalid cron expression '99 25 32 13 8'"):
        parse_cron("99 25 32 13 8")


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValueError):
        CronSchedule("99 25 32 13 8", "UTC")
    with pytest.raises(ValueError):
        CronSchedule("0 0 * * *", "EST")


# --- timezones ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone",
    ["UTC", NEW_YORK, "Europe/London", "Asia/Tokyo", "Asia/Kolkata", "Etc/UTC"],
)
def test_iana_zone_names_are_accepted(zone: str) -> None:
    assert parse_cron("0 9 * * *", zone).timezone == zone


@pytest.mark.parametrize(
    ("zone", "reason"),
    [
        ("+05:00", "fixed offsets and abbreviations"),
        ("-08:00", "fixed offsets and abbreviations"),
        ("UTC+5", "fixed offsets and abbreviations"),
        ("GMT+1", "fixed offsets and abbreviations"),
        ("Etc/GMT+5", "fixed offsets and abbreviations"),
        ("EST", "fixed offsets and abbreviations"),
        ("PST", "fixed offsets and abbreviations"),
        ("CET", "fixed offsets and abbreviations"),
        ("EST5EDT", "fixed offsets and abbreviations"),
        ("GMT", "fixed offsets and abbreviations"),
        ("", "invalid timezone"),
        ("Mars/Olympus_Mons", "unknown timezone"),
        ("america/new_york", "unknown timezone"),
        ("America/New_York/", "unknown timezone"),
        ("../etc/passwd", "unknown timezone"),
    ],
)
def test_offsets_abbreviations_and_unknown_zones_are_rejected(zone: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cron("0 9 * * *", zone)


def test_same_expression_differs_between_tokyo_and_new_york() -> None:
    after = "2026-02-12T10:30:00Z"
    tokyo = _runs(parse_cron("0 9 * * *", "Asia/Tokyo"), after, 1)
    new_york = _runs(parse_cron("0 9 * * *", NEW_YORK), after, 1)
    assert tokyo == ["2026-02-13T00:00:00.000Z"]  # 09:00 JST = 00:00Z
    assert new_york == ["2026-02-12T14:00:00.000Z"]  # 09:00 EST = 14:00Z
    assert tokyo != new_york


def test_local_time_follows_dst_in_new_york() -> None:
    # 09:00 EST is 14:00Z in winter; 09:00 EDT is 13:00Z in summer.
    schedule = parse_cron("0 9 * * 1-5", NEW_YORK)
    assert _runs(schedule, "2026-02-12T15:00:00Z", 1) == ["2026-02-13T14:00:00.000Z"]
    assert _runs(schedule, "2026-07-01T15:00:00Z", 1) == ["2026-07-02T13:00:00.000Z"]


# --- DST ------------------------------------------------------------------------------


def test_spring_forward_nonexistent_time_does_not_fire() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist that day.
    schedule = parse_cron("30 2 * * *", NEW_YORK)
    assert _fires_between(schedule, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z") == [
        "2026-03-07T07:30:00.000Z",  # 02:30 EST
        "2026-03-09T06:30:00.000Z",  # 02:30 EDT; nothing on the 8th
    ]


@pytest.mark.parametrize("expression", ["0 2 * * *", "59 2 * * *", "* 2 * * *", "0 0-59 2 * * *"])
def test_spring_forward_skips_every_time_inside_the_gap(expression: str) -> None:
    schedule = parse_cron(expression, NEW_YORK)
    fires = _fires_between(schedule, "2026-03-08T05:00:00Z", "2026-03-09T05:00:00Z")
    assert fires == []


def test_spring_forward_keeps_times_around_the_gap() -> None:
    schedule = parse_cron("*/30 * * * *", NEW_YORK)
    fires = _fires_between(schedule, "2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z")
    # 01:30 EST, then 03:00 EDT: the same instant-to-instant spacing as any other half hour.
    assert fires == [
        "2026-03-08T06:30:00.000Z",
        "2026-03-08T07:00:00.000Z",
        "2026-03-08T07:30:00.000Z",
        "2026-03-08T08:00:00.000Z",
    ]


def test_fall_back_repeated_time_fires_once_at_first_occurrence() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice.
    schedule = parse_cron("30 1 * * *", NEW_YORK)
    fires = _fires_between(schedule, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    assert fires == ["2026-11-01T05:30:00.000Z"]  # 01:30 EDT, not 06:30Z (01:30 EST)


@pytest.mark.parametrize(
    "after", ["2026-11-01T05:30:00Z", "2026-11-01T05:31:00Z", "2026-11-01T06:10:00Z"]
)
def test_fall_back_does_not_fire_again_in_the_repeated_hour(after: str) -> None:
    schedule = parse_cron("30 1 * * *", NEW_YORK)
    assert _runs(schedule, after, 1) == ["2026-11-02T06:30:00.000Z"]


def test_fall_back_repeated_hour_is_not_run_twice_by_minute_schedules() -> None:
    schedule = parse_cron("*/30 * * * *", NEW_YORK)
    fires = _fires_between(schedule, "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z")
    assert fires == [
        "2026-11-01T04:30:00.000Z",  # 00:30 EDT
        "2026-11-01T05:00:00.000Z",  # 01:00 EDT
        "2026-11-01T05:30:00.000Z",  # 01:30 EDT
        # 01:00 and 01:30 EST (06:00Z, 06:30Z) are repeats and do not fire.
        "2026-11-01T07:00:00.000Z",  # 02:00 EST
        "2026-11-01T07:30:00.000Z",
        "2026-11-01T08:00:00.000Z",
    ]


def test_fall_back_from_inside_the_second_pass_resumes_after_it() -> None:
    schedule = parse_cron("* * * * * *", NEW_YORK)
    # 06:10Z is 01:10 EST, the second pass; 01:10:01 EST "already happened" as EDT.
    assert _runs(schedule, "2026-11-01T06:10:00Z", 1) == ["2026-11-01T07:00:00.000Z"]


def test_southern_hemisphere_and_half_hour_dst() -> None:
    # Lord Howe Island shifts by 30 minutes: 02:00 -> 02:30 on 2026-10-04.
    schedule = parse_cron("15 2 * * *", "Australia/Lord_Howe")
    fires = _fires_between(schedule, "2026-10-02T00:00:00Z", "2026-10-05T00:00:00Z")
    assert [fire[:10] for fire in fires] == ["2026-10-02", "2026-10-04"]  # local 3rd and 5th


def test_skipped_calendar_day_does_not_fire() -> None:
    # Samoa skipped 2011-12-30 entirely when it moved across the date line.
    schedule = parse_cron("0 12 30 12 *", "Pacific/Apia")
    assert _runs(schedule, "2011-12-01T00:00:00Z", 1) == [
        "2012-12-29T22:00:00.000Z"
    ]  # 12:00 at +14:00


_ZONES = [NEW_YORK, "Europe/London", "Australia/Lord_Howe", "America/Santiago", "Asia/Tokyo"]
# Expression -> (minutes, hours) it matches, written out independently of the parser.
_EXPRESSIONS = {
    "30 2 * * *": ({30}, {2}),
    "30 1 * * *": ({30}, {1}),
    "*/15 * * * *": ({0, 15, 30, 45}, set(range(24))),
    "0 * * * *": ({0}, set(range(24))),
    "45 0-3 * * *": ({45}, {0, 1, 2, 3}),
    "0 0 * * *": ({0}, {0}),
}
_TRANSITIONS = [
    "2026-03-08T06:00:00Z",  # New York spring forward
    "2026-11-01T05:00:00Z",  # New York fall back
    "2026-03-29T00:00:00Z",  # London spring forward
    "2026-10-25T00:00:00Z",  # London fall back
    "2026-04-04T14:00:00Z",  # Lord Howe fall back
    "2026-10-03T14:00:00Z",  # Lord Howe spring forward
    "2026-04-05T02:00:00Z",  # Santiago fall back
    "2026-09-06T03:00:00Z",  # Santiago spring forward
]


def _reference_next_ms(expression: str, zone: str, after_ms: int) -> int:
    """Brute force: the first UTC minute after ``after_ms`` whose local wall time
    matches and is that wall time's first occurrence (fold 0)."""
    tz = ZoneInfo(zone)
    minutes, hours = _EXPRESSIONS[expression]
    minute_ms = (after_ms // _MINUTE_MS + 1) * _MINUTE_MS
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(3 * 24 * 60):
        local = (epoch + timedelta(milliseconds=minute_ms)).astimezone(tz)
        if local.fold == 0 and local.minute in minutes and local.hour in hours:
            return minute_ms
        minute_ms += _MINUTE_MS
    raise AssertionError("no reference fire time within 3 days")


@settings(max_examples=150, deadline=None)
@given(
    expression=st.sampled_from(sorted(_EXPRESSIONS)),
    zone=st.sampled_from(_ZONES),
    transition=st.sampled_from(_TRANSITIONS),
    offset_ms=st.integers(min_value=-26 * 3_600_000, max_value=26 * 3_600_000),
)
def test_next_after_ms_matches_brute_force_around_transitions(
    expression: str, zone: str, transition: str, offset_ms: int
) -> None:
    after_ms = _ms(transition) + offset_ms
    schedule = parse_cron(expression, zone)
    assert schedule.next_after_ms(after_ms) == _reference_next_ms(expression, zone, after_ms)


# --- value semantics ------------------------------------------------------------------


def test_schedule_is_frozen_and_compares_by_expression_and_zone() -> None:
    first = parse_cron("0 9 * * *", NEW_YORK)
    assert first == parse_cron("0 9 * * *", NEW_YORK)
    assert hash(first) == hash(parse_cron("0 9 * * *", NEW_YORK))
    assert first != parse_cron("0 9 * * *", "Asia/Tokyo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.expression = "0 10 * * *"  # type: ignore[misc]


def test_expression_is_kept_verbatim() -> None:
    assert parse_cron("*/5 * * * *").expression == "*/5 * * * *"
    assert parse_cron("0 0 * * Mon-Fri", NEW_YORK).expression == "0 0 * * Mon-Fri"
