"""Log output: plain text for people, or one JSON object per line for log pipelines.

``--log-format json`` (env ``OJS_LOG_FORMAT``) writes every record as one JSON object with the
OJS observability field names: ``timestamp`` (RFC 3339, ms, UTC), ``level``, ``message``,
``logger``, ``pid``, and where known ``ojs.job.id``, ``ojs.job.type``, ``ojs.job.queue``,
``ojs.job.attempt``, ``ojs.worker.id``, ``trace_id``, ``span_id``, ``request_id`` and
``exception``. The default is plain text.

Job and request fields come from ContextVars, so every line logged while a job runs (the
runtime's and the handler's own, from any logger) carries them: a pool binds :data:`JOB` in the
job's task, and the HTTP app binds :data:`REQUEST_ID` for each request. Fields passed with
``extra={"job_id": ..., "queue": ..., "type": ...}`` are used too.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from typing import Any

import msgspec

from runtime import timefmt, tracing

FORMATS = ("text", "json")
_LEVELS = {"WARNING": "warn", "CRITICAL": "fatal"}
_SEVERITY = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}
_encode = msgspec.json.Encoder().encode


class JobFields(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    type: str
    queue: str
    attempt: int
    worker_id: str
    traceparent: str | None = None  # the producer's, for trace_id on lines outside the handler


JOB: ContextVar[JobFields | None] = ContextVar("ojs_log_job", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("ojs_log_request_id", default=None)

# record attribute (from `extra`) -> JSON field
_EXTRA_FIELDS = (
    ("job_id", "ojs.job.id"), ("type", "ojs.job.type"), ("queue", "ojs.job.queue"),
    ("attempt", "ojs.job.attempt"), ("worker_id", "ojs.worker.id"), ("request_id", "request_id"),
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": timefmt.format_ms(int(record.created * 1000)),
            "level": _LEVELS.get(record.levelname, record.levelname.lower()),
            "severity_number": _SEVERITY.get(record.levelname, 9),
            "message": record.getMessage(),
            "logger": record.name,
            "pid": record.process,
        }
        job = JOB.get()
        if job is not None:
            out.update({"ojs.job.id": job.job_id, "ojs.job.type": job.type, "ojs.job.queue": job.queue,
                        "ojs.job.attempt": job.attempt, "ojs.worker.id": job.worker_id})
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        for attribute, field in _EXTRA_FIELDS:
            value = record.__dict__.get(attribute)
            if value is not None:
                out[field] = value if isinstance(value, (str, int, float, bool)) else str(value)
        trace = tracing.ids() or (tracing.ids(job.traceparent) if job is not None else None)
        if trace is not None:
            out["trace_id"], out["span_id"] = trace
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return _encode(out).decode()


def configure(level: str, log_format: str, *, text_format: str) -> None:
    """Set up the root logger once, at process start (children inherit it through fork)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def default_format() -> str:
    value = (os.environ.get("OJS_LOG_FORMAT") or "text").strip().lower()
    return value if value in FORMATS else "text"
