"""Job versions (ojs-job-versioning.md): one spelling for keys, and their order.

A version is what the producer sent: a JSON integer (``2``) or a string (``"2.0"``,
``"2.0.0"``). The job keeps it as sent; the schema registry keys it by its text, so the job
``version: 2`` and the schema registered at ``.../schemas/<type>/2`` meet. A version of digits
only is shown as the integer it spells.
"""

from __future__ import annotations

import re

_PART = re.compile(r"[.\-+]")


def version_key(version: int | str) -> str:
    """The registry's key for a version: its text."""
    return str(version)


def display(key: str) -> int | str:
    """A registry key as the API shows it: ``"2"`` is the integer 2, ``"2.0"`` stays a string."""
    return int(key) if key.isdigit() else key


def precedence(key: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key, highest version last: numeric parts compare as numbers (1.10 > 1.9), missing
    parts count as 0 (2 = 2.0 = 2.0.0), and a release sorts after its pre-releases
    (2.0.0 > 2.0.0-rc.1), as in SemVer; build metadata (+...) is ignored."""
    main, dash, pre = key.partition("-")
    parts = main.split("+", 1)[0].split(".")
    parts += ["0"] * (3 - len(parts))
    numbers = tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)
    if not dash:
        return (*numbers, (2, 0))
    pre = pre.split("+", 1)[0]
    return (*numbers, (1, 0), *((0, int(p)) if p.isdigit() else (1, p) for p in _PART.split(pre)))


def _part(p: str) -> str:
    # Numbers fixed-width (so they compare as numbers), before words; "." ends a part, and sorts
    # before every character a part holds, so "ab" < "abc".
    return f"n{int(p):012d}." if p.isdigit() else f"s{p}."


def sort_key(key: str) -> str:
    """A string whose byte order is the versions' precedence order (as `precedence`), for Lua to
    compare: fetch.lua routes by version with plain string comparisons."""
    main, dash, pre = key.partition("-")
    parts = main.split("+", 1)[0].split(".")
    parts += ["0"] * (3 - len(parts))
    head = "".join(_part(p) for p in parts)
    if not dash:
        return head + "~"  # a release: after each of its pre-releases ("-" < "~")
    return head + "-" + "".join(_part(p) for p in _PART.split(pre.split("+", 1)[0]))


class VersionRange:
    """A worker's accepted versions of a job type (ojs-job-versioning.md 8.1): `*`, `2.0`
    (exactly), `>=1.0 <3.0`, `>=1.0, <2.0`, `>2.0`, `<=2.0`. The bounds as sort keys, "" for
    none; `lo_op` is ">=" or ">", `hi_op` "<=" or "<"."""

    __slots__ = ("hi", "hi_op", "lo", "lo_op")

    def __init__(self) -> None:
        self.lo, self.lo_op, self.hi, self.hi_op = "", ">=", "", "<="

    def script_args(self) -> tuple[str, str, str, str]:
        return self.lo, self.lo_op, self.hi, self.hi_op


_CONSTRAINT = re.compile(r"\s*(>=|<=|==|=|>|<)?\s*([0-9][0-9A-Za-z.+\-]{0,63})\s*,?")


def parse_range(text: str) -> VersionRange | None:
    """None for `*` (any version); ValueError for what is not a range."""
    if text.strip() == "*":
        return None
    found = VersionRange()
    position, given = 0, 0
    while position < len(text.rstrip()):
        match = _CONSTRAINT.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"invalid version range {text!r}: expected e.g. '*', '2.0', '>=1.0 <3.0'")
        position, given = match.end(), given + 1
        op, bound = match.group(1) or "=", sort_key(match.group(2))
        if op in ("=", "==", ">=", ">") and (bound, op == ">") > (found.lo, found.lo_op == ">"):
            found.lo, found.lo_op = bound, ">" if op == ">" else ">="
        if op in ("=", "==", "<=", "<") and (not found.hi or (bound, op == "<=") < (found.hi, found.hi_op == "<=")):
            found.hi, found.hi_op = bound, "<" if op == "<" else "<="
    if not given:
        raise ValueError(f"invalid version range {text!r}: expected e.g. '*', '2.0', '>=1.0 <3.0'")
    return found
