"""How a failure report becomes a verdict for nack.lua, and the error record stored on the job.

Decision order (OJS retry spec): requeue asked for; a handler response code (DISCARD / FAIL,
DEAD_LETTER); a non-retryable error (retryable false, or its type listed in the policy's
non_retryable_errors); otherwise a retry, which nack.lua turns into a discard once the attempts
are spent.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import msgspec

from runtime import timefmt
from runtime.envelope import ErrorInfo

MAX_BACKTRACE_FRAMES = 50
MAX_BACKTRACE_CHARS = 10_000

_encode = msgspec.json.encode


def error_type(error: ErrorInfo) -> str:
    details_class = (error.details or {}).get("error_class")
    if error.type:
        return error.type
    if isinstance(details_class, str) and details_class:
        return details_class
    return error.code or "handler_error"


def matches_non_retryable(kind: str, patterns: list[str]) -> bool:
    """Exact name, a `prefix.*` namespace, or a `*` glob.

    Patterns are never compiled as regular expressions: they come from clients, and a hostile
    pattern must not be able to stall the broker.
    """
    for pattern in patterns:
        if pattern == kind:
            return True
        if pattern.endswith(".*") and kind.startswith(pattern[:-1]):
            return True
        if "*" in pattern and fnmatch.fnmatchcase(kind, pattern):
            return True
    return False


def verdict(error: ErrorInfo | None, *, requeue: bool, non_retryable: list[str]) -> str:
    if requeue:
        return "requeue"
    if error is None:
        return "retry"
    response = (error.response_code or error.code or "").upper()
    if response in ("DISCARD", "FAIL"):
        return "discard"
    if response == "DEAD_LETTER":
        return "dead_letter"
    if error.retryable is False or matches_non_retryable(error_type(error), non_retryable):
        return "nonretryable"
    return "retry"


def settled_outcome(verdict: str, state: str, *, on_exhaustion: str | None) -> str:
    """What a nack did, in metric terms (runtime.metrics.job_outcome), from its verdict and the
    state the job is in afterwards: released, retried, failed or dead_lettered. Mirrors nack.lua:
    an exhausted retry, a non-retryable error or a spent lease follow the policy's on_exhaustion;
    discard never dead-letters and dead_letter always does."""
    if verdict == "release":
        return "released"
    if state != "discarded":
        return "retried"
    if verdict == "dead_letter" or (verdict != "discard" and on_exhaustion == "dead_letter"):
        return "dead_lettered"
    return "failed"


def _backtrace(value: list[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    frames = value.splitlines() if isinstance(value, str) else value
    frames = frames[-MAX_BACKTRACE_FRAMES:]
    total, kept = 0, []
    for frame in reversed(frames):
        total += len(frame)
        if total > MAX_BACKTRACE_CHARS:
            break
        kept.append(frame)
    return list(reversed(kept))


MAX_KEY_PAUSE_MS = 7 * 86_400_000


def error_record(error: ErrorInfo, now_ms: int) -> bytes:
    """The error as stored on the job (nack.lua adds the attempt number in front)."""
    when = timefmt.format_ms(now_ms)
    record: dict[str, Any] = {
        "code": error.code or "handler_error",
        "type": error_type(error),
        "message": error.message,
    }
    if error.retryable is not None:
        record["retryable"] = error.retryable
    if error.details is not None:
        record["details"] = error.details
    if (frames := _backtrace(error.backtrace)) is not None:
        record["backtrace"] = frames
    if error.rate_limit_until is not None:  # at most a week ahead: a typo cannot stop a key for years
        until_ms = min(timefmt.parse_timestamp_ms(error.rate_limit_until), now_ms + MAX_KEY_PAUSE_MS)
        record["rate_limit_until"] = timefmt.format_ms(until_ms)
        record["rate_limit_until_ms"] = until_ms  # read by nack.lua: it stops the job's key until then
    record["occurred_at"] = when
    record["timestamp"] = when
    return _encode(record)


def server_error(kind: str, code: str, message: str, now_ms: int, **extra: Any) -> bytes:
    """An error the broker itself records (lease expiry, execution timeout, worker loss)."""
    when = timefmt.format_ms(now_ms)
    record: dict[str, Any] = {"code": code, "type": kind, "message": message, "retryable": True}
    record.update(extra)
    record["occurred_at"] = when
    record["timestamp"] = when
    return _encode(record)
