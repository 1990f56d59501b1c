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
