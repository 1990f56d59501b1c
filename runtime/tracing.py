"""W3C trace context through jobs: ``meta.traceparent`` in, restored around the handler.

The producer's ``traceparent`` (and ``tracestate``) travel in the job's ``meta`` (OJS
observability §5); an HTTP enqueue also takes them from its request headers when ``meta`` has
none. Around the handler, :func:`job_span` sets :data:`TRACEPARENT`, a ContextVar any code in the
handler (or a sync handler's thread) can read, and, when the optional ``opentelemetry-api`` is
installed, starts a CONSUMER span named ``"<queue> process"`` whose parent is the extracted
producer context and which links to it, so the handler's own spans join the producer's trace.
Without opentelemetry, :data:`TRACEPARENT` is the producer's ``traceparent``; with it, the
consumer span's.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from runtime.context import Job


def _optional(module: str) -> Any:
    """An optional dependency (the extra `otel`), typed Any whether it is installed or not."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


otel_trace = _optional("opentelemetry.trace")
_tracecontext = _optional("opentelemetry.trace.propagation.tracecontext")

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
MAX_TRACESTATE_CHARS = 512

TRACEPARENT: ContextVar[str | None] = ContextVar("ojs_traceparent", default=None)


def valid_traceparent(value: object) -> bool:
    """A well-formed W3C traceparent (version not ff, trace and span ids not all zero)."""
    if not isinstance(value, str):
        return False
    found = _TRACEPARENT.match(value.strip().lower())
    if found is None:
        return False
    version, trace_id, span_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return trace_id != "0" * 32 and span_id != "0" * 16


def header_context(traceparent: bytes | None, tracestate: bytes | None) -> dict[str, str]:
    """The meta entries an enqueue request's trace headers contribute (nothing if invalid)."""
    if traceparent is None:
        return {}
    parent = traceparent.decode("latin-1").strip().lower()
    if not valid_traceparent(parent):
        return {}
    out = {"traceparent": parent}
    if tracestate:
        state = tracestate.decode("latin-1").strip()
        if state and len(state) <= MAX_TRACESTATE_CHARS:
            out["tracestate"] = state
    return out


def ids(traceparent: str | None = None) -> tuple[str, str] | None:
    """(trace_id, span_id) of a traceparent (default: the current job's), for log lines."""
    current = traceparent if traceparent is not None else TRACEPARENT.get()
    if not valid_traceparent(current):
        return None
    assert isinstance(current, str)
    parts = current.strip().lower().split("-")
    return parts[1], parts[2]


@contextlib.contextmanager
def job_span(job: Job, *, worker_id: str) -> Iterator[None]:
    """The job's trace context around its handler (see the module docstring)."""
    meta = job.meta
    parent = meta.get("traceparent")
    if not valid_traceparent(parent):
        yield
        return
    assert isinstance(parent, str)
    if otel_trace is None:
        token = TRACEPARENT.set(parent.strip().lower())
        try:
            yield
        finally:
            TRACEPARENT.reset(token)
        return
    carrier = {"traceparent": parent}
    if isinstance(meta.get("tracestate"), str):
        carrier["tracestate"] = meta["tracestate"]
    producer = _tracecontext.TraceContextTextMapPropagator().extract(carrier)
    link = otel_trace.Link(otel_trace.get_current_span(producer).get_span_context())
    tracer = otel_trace.get_tracer("ojs-runtime")
    with tracer.start_as_current_span(
        f"{job.queue} process", context=producer, kind=otel_trace.SpanKind.CONSUMER, links=[link],
        attributes=_attributes(job, worker_id),
    ) as span:
        token = TRACEPARENT.set(_format(span.get_span_context()) or parent)
        try:
            yield
        finally:
            TRACEPARENT.reset(token)


def _attributes(job: Job, worker_id: str) -> dict[str, Any]:
    """OJS observability §7: the required and recommended process-span attributes."""
    return {
        "messaging.system": "ojs", "messaging.operation.type": "process",
        "messaging.destination.name": job.queue, "messaging.message.id": job.id,
        "ojs.job.id": job.id, "ojs.job.type": job.type, "ojs.job.queue": job.queue,
        "ojs.job.attempt": job.attempt, "ojs.job.priority": job.priority, "ojs.worker.id": worker_id,
    }


def _format(context: Any) -> str | None:
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
