"""A job's Redis hash rendered as the OJS envelope.

JSON fragments (args, meta, result, errors, unknown top-level fields) are spliced back as Raw,
never re-parsed: what the client sent is what it gets back.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw

from runtime import timefmt
from runtime.broker.records import RETRY_FIELD_DEFAULTS, NewJob, retry_display

_encode = msgspec.json.encode
_extras_decoder = msgspec.json.Decoder(dict[str, Raw])
HISTORY_LIMIT = 20  # must match HISTORY in nack.lua

# (envelope name, hash field) pairs, the hash field already encoded: this runs for every job
# fetched, got or listed.
_TIME_FIELDS = tuple((n, n.encode()) for n in (
    "created_at", "enqueued_at", "started_at", "completed_at", "cancelled_at", "discarded_at",
    "expired_at", "re_enqueued_at",
))
_JSON_FIELDS = tuple((n, n.encode()) for n in ("unique", "rate_limit", "tags"))
# The hash leaves out a default max_attempts (and the default retry policy: retry_display).
DEFAULT_MAX_ATTEMPTS = RETRY_FIELD_DEFAULTS["max_attempts"].encode()
_INT_FIELDS = tuple((n, n.encode()) for n in ("timeout_ms", "visibility_timeout_ms", "retry_delay_ms"))
_TEXT_FIELDS = tuple((n, n.encode()) for n in ("scheduled_at", "expires_at", "worker_id", "previous_state", "workflow_id"))


def pairs_to_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply as returned inside a script result (a flat list) into a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=False))


def render_job(h: dict[bytes, bytes]) -> dict[str, Any]:
    """The job envelope as a dict ready for msgspec; JSON fragments stay Raw (never re-parsed)."""

    get = h.get
    env: dict[str, Any] = {
        "specversion": "1.0",
        "id": _text(get(b"id")),
        "type": _text(get(b"type")),
        "queue": _text(get(b"queue")),
        "args": Raw(get(b"args", b"[]")),
        "meta": Raw(get(b"meta", b"{}")),
        "priority": int(get(b"priority", b"0")),
        "state": _text(get(b"state")),
        "attempt": int(get(b"attempt", b"0")),
        "max_attempts": int(get(b"max_attempts", DEFAULT_MAX_ATTEMPTS)),
    }
    for name, field in _INT_FIELDS:
        if (value := get(field)) is not None:
            env[name] = int(value)
    env["retry"] = Raw(retry_display(get(b"retry")))
    for name, field in _JSON_FIELDS:
        if (value := get(field)) is not None:
            env[name] = Raw(value)
    if (schema := get(b"schema")) is not None:
        env["schema"] = schema.decode()
    if (version := get(b"version")) is not None:
        env["version"] = Raw(version)
    for name, field in _TIME_FIELDS:
        if (value := get(field)) is not None:
            env[name] = timefmt.format_ms(int(value))
    if (parents := get(b"parent_results")) is not None:
        env["parent_results"] = Raw(parents)
    for name, field in _TEXT_FIELDS:
        if (value := get(field)) is not None:
            env[name] = value.decode()
    if (next_attempt := h.get(b"next_attempt_at")) is not None:
        env["next_attempt_at"] = env["next_retry_at"] = timefmt.format_ms(int(next_attempt))
    if (error := h.get(b"error")) is not None:
        env["error"] = Raw(error)
    errors = error_history(h)
    if errors:
        env["errors"] = errors
    if (result := h.get(b"result")) is not None:
        env["result"] = Raw(result)
    if (progress := h.get(b"progress")) is not None:
        env["progress"] = float(progress)
    if (extra := h.get(b"extra")) is not None:
        for key, value in _extras_decoder.decode(extra).items():
            env.setdefault(key, value)
    return env


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def error_history(h: dict[bytes, bytes]) -> list[Raw]:
    count = int(h.get(b"nerr", b"0"))
    if count == 0:
        return []
    history = []
    for k in range(max(1, count - HISTORY_LIMIT + 1), count + 1):
        value = h.get(f"e{k}".encode())
        if value is not None:
            history.append(Raw(value))
    return history


def encode_job(h: dict[bytes, bytes]) -> bytes:
    return _encode(render_job(h))


def as_hash(job: NewJob) -> dict[bytes, bytes]:
    """The hash enqueue.lua writes for this job, to render the reply without reading it back."""
    return {name.encode(): value.encode() for name, value in job.fields.items()}
