"""Matching jobs (or executions) against what an assertion expects, and saying why not.

A criterion left out matches anything. ``args`` compare by deep equality (a tuple equals the
list it holds), ``meta`` is a subset match, ``queue`` an equality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class _Unset:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Unset()


def mismatches(record: Mapping[str, Any], job_type: str | None, *, args: Any = ANY, queue: str | None = None,
               meta: Mapping[str, Any] | None = None) -> list[str]:
    """Why `record` does not match (empty: it does)."""
    why: list[str] = []
    if job_type is not None and record.get("type") != job_type:
        why.append(f"type {record.get('type')!r} != {job_type!r}")
    if args is not ANY and record.get("args") != _plain(args):
        why.append(f"args {record.get('args')!r} != {_plain(args)!r}")
    if queue is not None and record.get("queue") != queue:
        why.append(f"queue {record.get('queue')!r} != {queue!r}")
    if meta is not None:
        have = record.get("meta") or {}
        for key, value in meta.items():
            if key not in have:
                why.append(f"meta has no {key!r}")
            elif have[key] != _plain(value):
                why.append(f"meta[{key!r}] {have[key]!r} != {_plain(value)!r}")
    return why


def select(records: Sequence[Mapping[str, Any]], job_type: str | None, **criteria: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in records if not mismatches(r, job_type, **criteria)]


def expect(what: str, records: Sequence[Mapping[str, Any]], job_type: str, *, count: int | None,
           **criteria: Any) -> list[dict[str, Any]]:
    """The matching records; AssertionError, listing the others and why, unless there are
    `count` of them (at least one when `count` is None)."""
    found = select(records, job_type, **criteria)
    if (count is None and found) or (count is not None and len(found) == count):
        return found
    wanted = "at least 1" if count is None else str(count)
    described = _criteria(job_type, criteria)
    lines = [f"expected {wanted} {what} job(s) matching {described}, found {len(found)}"]
    others = [r for r in records if mismatches(r, job_type, **criteria)]
    if not records:
        lines.append(f"  (no {what} jobs at all in this test)")
    for record in others[:20]:
        lines.append(f"  {_label(record)}: {'; '.join(mismatches(record, job_type, **criteria))}")
    if len(others) > 20:
        lines.append(f"  ... and {len(others) - 20} more")
    raise AssertionError("\n".join(lines))


def refute(what: str, records: Sequence[Mapping[str, Any]], job_type: str, **criteria: Any) -> None:
    found = select(records, job_type, **criteria)
    if found:
        lines = [f"unexpected {what} job(s) matching {_criteria(job_type, criteria)}:"]
        lines += [f"  {_label(r)} args={r.get('args')!r} queue={r.get('queue')!r}" for r in found[:20]]
        raise AssertionError("\n".join(lines))


def _label(record: Mapping[str, Any]) -> str:
    attempt = f" attempt {record['attempt']}" if "outcome" in record else ""
    return f"{record.get('type')} {record.get('id')}{attempt}"


def _criteria(job_type: str, criteria: Mapping[str, Any]) -> str:
    shown = [repr(job_type)]
    shown += [f"{k}={_plain(v)!r}" for k, v in criteria.items() if v is not ANY and v is not None]
    return " ".join(shown)


def _plain(value: Any) -> Any:
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
