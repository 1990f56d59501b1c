"""W3C trace context through jobs, and the spans of enqueues, requests and attempts.

The producer's ``traceparent`` (and ``tracestate``) travel in the job's ``meta`` (OJS
observability §5); an HTTP enqueue also takes them from its request headers when ``meta`` has
none. Around the handler, :func:`job_span` sets :data:`TRACEPARENT`, a ContextVar any code in the
handler (or a sync handler's thread) can read, and, when the optional ``opentelemetry-api`` is
installed, starts a CONSUMER span named ``"<queue> process"`` whose parent is the extracted
producer context and which links to it, so the handler's own spans join the producer's trace.
Without opentelemetry, :data:`TRACEPARENT` is the producer's ``traceparent``; with it, the
consumer span's.

When this process exports traces (:mod:`runtime.trace_export` called :func:`enable`), every
attempt gets its CONSUMER span (a new root when the job carries no context) with its outcome,
every enqueue a PRODUCER span whose context the jobs carry (:func:`producer_span`), every HTTP
request a SERVER span (:func:`server_span`), and a workflow step's span links to the spans of
the steps it waited for. When it does not, each of these is one check of a module global.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator, Sequence
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


def enable(tracer: Any) -> None:
    """Spans for every enqueue, request and attempt of this process, made by `tracer`."""
    global _tracer
    _tracer = tracer


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    """Whether this process exports traces (see :mod:`runtime.trace_export`)."""
    return _tracer is not None


def _active_tracer() -> Any:
    """The exporting tracer; else, where the application configured an SDK itself, the global
    provider's; else None (the API alone, or no opentelemetry at all: nothing would record)."""
    if _tracer is not None or otel_trace is None:
        return _tracer
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("ojs-runtime")


_tracer: Any = None


def producer_spans_recorded() -> bool:
    """Whether a producer span made now would record (see :func:`producer_span`): the
    untraced enqueue path asks this and skips the span's machinery."""
    return _active_tracer() is not None


def _context_of(traceparent: str, tracestate: object = None) -> Any:
    carrier = {"traceparent": traceparent}
    if isinstance(tracestate, str):
        carrier["tracestate"] = tracestate
    return _tracecontext.TraceContextTextMapPropagator().extract(carrier)


def _link(traceparent: str, tracestate: object = None, **attributes: Any) -> Any:
    context = otel_trace.get_current_span(_context_of(traceparent, tracestate)).get_span_context()
    return otel_trace.Link(context, attributes or None)


class Attempt:
    """What the executor tells the consumer span once the attempt has an outcome."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.traceparent = _format(span.get_span_context())

    def outcome(self, outcome: str, *, error_type: str | None = None, error_message: str | None = None,
                backtrace: str | None = None, attempt: int = 0) -> None:
        """`outcome` is completed, retry, failed, discarded, cancelled or released; an error
        sets the span's status to ERROR and records it (OJS distributed tracing §8)."""
        span = self.span
        span.set_attribute("ojs.job.outcome", outcome)
        if error_type is None:  # a cancellation is not an error either (OJS distributed tracing §8.1)
            span.set_status(otel_trace.StatusCode.OK)
            return
        span.set_attributes({"error.type": error_type, "error.message": error_message or "",
                             "ojs.job.error.attempt": attempt})
        event = {"exception.type": error_type, "exception.message": error_message or ""}
        if backtrace:
            event["exception.stacktrace"] = backtrace
        span.add_event("exception", event)
        span.set_status(otel_trace.StatusCode.ERROR, error_message or error_type)


@contextlib.contextmanager
def job_span(job: Job, *, worker_id: str, workflow_step: int | None = None,
             step_links: Sequence[str] = ()) -> Iterator[Attempt | None]:
    """The job's trace context around its handler (see the module docstring); yields the
    consumer span's :class:`Attempt` when there is a span. For a workflow step, its index and
    the traceparents of the steps it waited for."""
    meta = job.meta
    parent = meta.get("traceparent")
    if not valid_traceparent(parent):
        if _tracer is None:
            yield None
            return
        parent = None
    if otel_trace is None:
        assert isinstance(parent, str)
        token = TRACEPARENT.set(parent.strip().lower())
        try:
            yield None
        finally:
            TRACEPARENT.reset(token)
        return
    producer = None
    links = []
    if isinstance(parent, str):
        producer = _context_of(parent, meta.get("tracestate"))
        links.append(otel_trace.Link(otel_trace.get_current_span(producer).get_span_context()))
    links.extend(_link(step, **{"ojs.link.kind": "workflow_step"}) for step in step_links if valid_traceparent(step))
    tracer = _tracer if _tracer is not None else otel_trace.get_tracer("ojs-runtime")
    with tracer.start_as_current_span(
        f"{job.queue} process", context=producer, kind=otel_trace.SpanKind.CONSUMER, links=links,
        attributes=_attributes(job, worker_id, workflow_step), record_exception=False, set_status_on_exception=False,
    ) as span:
        token = TRACEPARENT.set(_format(span.get_span_context()) or parent)
        try:
            yield Attempt(span) if span.is_recording() else None  # the API alone: nothing to tell
        finally:
            TRACEPARENT.reset(token)


def _attributes(job: Job, worker_id: str, workflow_step: int | None) -> dict[str, Any]:
    """OJS observability §7: the required and recommended process-span attributes."""
    out: dict[str, Any] = {
        "messaging.system": "ojs", "messaging.operation.type": "process",
        "messaging.destination.name": job.queue, "messaging.message.id": job.id,
        "ojs.job.id": job.id, "ojs.job.type": job.type, "ojs.job.queue": job.queue,
        "ojs.job.attempt": job.attempt, "ojs.job.max_attempts": job.max_attempts,
        "ojs.job.priority": job.priority, "ojs.worker.id": worker_id,
    }
    if job.workflow_id:
        out["ojs.workflow.id"] = job.workflow_id
        if workflow_step is not None:
            out["ojs.workflow.step"] = workflow_step
    return out


# --- the producer side -------------------------------------------------------------------------


class Producer:
    """One PRODUCER span for one enqueue call: a job, a batch or a workflow's jobs.

    Each job's meta gets the span's ``traceparent`` unless it carries one of its own (kept as it
    is, OJS distributed tracing §6.2), to which the span then links."""

    __slots__ = ("span", "traceparent", "tracestate")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.traceparent = _format(span.get_span_context()) or ""
        state = span.get_span_context().trace_state
        self.tracestate = state.to_header() if state else ""

    def carrier(self) -> dict[str, str]:
        """The trace context the span's jobs carry in their meta."""
        out = {"traceparent": self.traceparent}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out

    def inject(self, meta: dict[str, Any], *, workflow: bool = False) -> None:
        """The span's context into a job's meta (see the class docstring); for a workflow's
        jobs also as ``ojs.workflow.trace_origin`` (OJS distributed tracing §6.3)."""
        if not self.link_own(meta):
            meta.update(self.carrier())
        if workflow:
            meta.setdefault("ojs.workflow.trace_origin", self.traceparent)

    def link_own(self, meta: dict[str, Any]) -> bool:
        """Link to the context a job's meta carries of its own (not this span's); True if so."""
        own = meta.get("traceparent")
        if not isinstance(own, str) or not valid_traceparent(own) or own == self.traceparent:
            return False
        self.span.add_link(_link(own, meta.get("tracestate")).context)
        return True

    def jobs(self, jobs: Sequence[tuple[str, str, str]]) -> None:
        """Name the span and set its attributes from the (id, type, queue) of its jobs."""
        queues = {queue for _id, _type, queue in jobs}
        queue = next(iter(queues)) if len(queues) == 1 else None
        span = self.span
        if len(jobs) == 1:
            job_id, job_type, _queue = jobs[0]
            span.update_name(f"{queue} enqueue")
            span.set_attributes({"messaging.message.id": job_id, "ojs.job.id": job_id, "ojs.job.type": job_type})
        else:
            span.update_name(f"{queue} enqueue_batch" if queue else "enqueue_batch")
            # The jobs' ids, to find each one's process span (which links to this span).
            span.set_attributes({"messaging.batch.message_count": len(jobs),
                                 "ojs.job.ids": [job_id for job_id, _type, _queue in jobs]})
        if queue is not None:
            span.set_attributes({"messaging.destination.name": queue, "ojs.job.queue": queue})

    def workflow(self, workflow_id: str, kind: str, jobs: int) -> None:
        self.span.set_attributes({"ojs.workflow.id": workflow_id, "ojs.workflow.type": kind,
                                  "messaging.batch.message_count": jobs})

    def failed(self, err: BaseException) -> None:
        self.span.set_status(otel_trace.StatusCode.ERROR, str(err) or type(err).__name__)
        self.span.set_attribute("error.type", type(err).__name__)


@contextlib.contextmanager
def producer_span(name: str = "enqueue", *, exporting_only: bool = False) -> Iterator[Producer | None]:
    """A PRODUCER span around an enqueue (None when nothing records spans); its name is set
    once the jobs are known (:meth:`Producer.jobs`). With `exporting_only` (the HTTP endpoint),
    only when this process exports: one check of a global on the untraced path."""
    tracer = _tracer if exporting_only else _active_tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, kind=otel_trace.SpanKind.PRODUCER, record_exception=False, set_status_on_exception=False,
        attributes={"messaging.system": "ojs", "messaging.operation.type": "publish"},
    ) as span:
        producer = Producer(span)
        try:
            yield producer
        except BaseException as err:
            producer.failed(err)
            raise
        span.set_status(otel_trace.StatusCode.OK)


# --- HTTP requests ------------------------------------------------------------------------------


@contextlib.contextmanager
def server_span(method: str, headers: dict[bytes, bytes]) -> Iterator[Any]:
    """A SERVER span around one HTTP request, child of the caller's ``traceparent`` header; the
    caller names it after the route template (:func:`name_route`), never the raw path."""
    parent = None
    given = headers.get(b"traceparent")
    if given is not None:
        context = header_context(given, headers.get(b"tracestate"))
        if context:
            parent = _context_of(context["traceparent"], context.get("tracestate"))
    with _tracer.start_as_current_span(
        method, context=parent, kind=otel_trace.SpanKind.SERVER,
        attributes={"http.request.method": method}, record_exception=False, set_status_on_exception=False,
    ) as span:
        yield span


def name_route(span: Any, method: str, template: str) -> None:
    span.update_name(f"{method} {template}")
    span.set_attribute("http.route", template)


def response_status(span: Any, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(otel_trace.StatusCode.ERROR)


def _format(context: Any) -> str | None:
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
