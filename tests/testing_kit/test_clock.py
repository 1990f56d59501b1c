"""Time control moves runtime.timefmt.now_ms for the whole process, and only inside a context."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

from runtime import testing, timefmt

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_the_clock_is_frozen_moved_and_restored() -> None:
    with testing.fake_mode() as ojs:
        assert ojs.freeze_time("2026-03-01T12:00:00Z") == timefmt.now_ms() == 1_772_366_400_000
        ojs.advance_time("PT1H")
        ojs.advance_time(dt.timedelta(minutes=1))
        ojs.advance_time(1.5)
        assert timefmt.format_ms(timefmt.now_ms()) == "2026-03-01T13:01:01.500Z"
        with pytest.raises(ValueError, match="forward"):
            ojs.advance_time(-1)
        with testing.fake_mode() as inner:
            inner.freeze_time(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
            assert timefmt.format_ms(timefmt.now_ms()).startswith("2030-01-01")
        assert timefmt.format_ms(timefmt.now_ms()) == "2026-03-01T13:01:01.500Z"  # the outer clock again
    assert timefmt.now_ms is timefmt.wall_now_ms


def test_advancing_a_clock_that_was_not_frozen_starts_from_now() -> None:
    with testing.fake_mode() as ojs:
        before = timefmt.wall_now_ms()
        assert ojs.advance_time("P1D") >= before + 86_400_000
    assert timefmt.now_ms is timefmt.wall_now_ms


def test_nothing_in_the_runtime_holds_a_copy_of_now_ms() -> None:
    """Time control replaces timefmt.now_ms; a `from runtime.timefmt import now_ms` would keep
    the wall clock and escape it."""
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "runtime.timefmt":
                if any(alias.name == "now_ms" for alias in node.names):
                    offenders.append(str(path.relative_to(RUNTIME)))
    assert offenders == []
