"""Pure parts of observability: metric definitions, outcome mapping, trace context, JSON logs,
and the readiness board. No Redis, no processes."""

from __future__ import annotations

import asyncio
import logging
import sys

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime import logs, metrics, tracing
from runtime.broker import failures
from runtime.broker.records import job_from_body
from runtime.context import Job
from runtime.liveness import Board

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_metrics_every_metric_is_defined_once_labelled_and_named_with_a_unit() -> None:
    defined = [v for v in vars(metrics).values() if isinstance(v, (Counter, Gauge, Histogram))]
    assert len(defined) == len(metrics.ALL) and set(map(id, defined)) == set(map(id, metrics.ALL))
    for metric in metrics.ALL:
        # Labelled: no value exists before .labels(), so switching to multiprocess mode after
        # import (enable_multiprocess) cannot leave a value behind in process memory.
        assert metric._labelnames, metric._name
        assert "job_id" not in metric._labelnames and "id" not in metric._labelnames
        assert metric._name.startswith("ojs_")
        if isinstance(metric, Histogram):
            assert metric._name.endswith("_seconds")


@pytest.mark.parametrize(("verdict", "state", "on_exhaustion", "outcome"), [
    ("release", "available", "discard", "released"),
    ("retry", "retryable", "dead_letter", "retried"),
    ("requeue", "available", None, "retried"),
    ("retry", "discarded", "discard", "failed"),
    ("retry", "discarded", "dead_letter", "dead_lettered"),
    ("nonretryable", "discarded", "dead_letter", "dead_lettered"),
    ("discard", "discarded", "dead_letter", "failed"),
    ("dead_letter", "discarded", "discard", "dead_lettered"),
])
def test_failures_settled_outcome_mirrors_nack(verdict: str, state: str, on_exhaustion: str | None, outcome: str) -> None:
    assert failures.settled_outcome(verdict, state, on_exhaustion=on_exhaustion) == outcome


def test_tracing_validates_traceparent_and_reads_request_headers() -> None:
    assert tracing.valid_traceparent(PARENT)
    for bad in ("", "00-abc", PARENT.replace("4bf9", "zzzz"), "ff" + PARENT[2:],
                f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", None, 5):
        assert not tracing.valid_traceparent(bad), bad
    assert tracing.header_context(PARENT.upper().encode(), b"ojs=p:8") == {"traceparent": PARENT, "tracestate": "ojs=p:8"}
    assert tracing.header_context(b"garbage", b"ojs=p:8") == {}
    assert tracing.header_context(None, None) == {}


def test_enqueue_takes_the_trace_headers_only_when_meta_has_none() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    headers = {"traceparent": other}
    plain = job_from_body(b'{"type":"a.b","args":[]}', now_ms=0, trace_context=headers)
    own = job_from_body(b'{"type":"a.b","args":[],"meta":{"traceparent":"' + PARENT.encode() + b'"}}',
                        now_ms=0, trace_context=headers)
    assert msgspec.json.decode(plain.fields["meta"]) == {"traceparent": other}
    assert msgspec.json.decode(own.fields["meta"]) == {"traceparent": PARENT}


def test_tracing_job_span_sets_the_context_around_the_handler_only() -> None:
    job = Job(id="j1", type="a.b", queue="q", meta={"traceparent": PARENT})
    # With opentelemetry installed and no SDK configured (the dev install) the same holds: the
    # API's no-op tracer makes no span of its own.
    assert tracing.TRACEPARENT.get() is None
    with tracing.job_span(job, worker_id="w"):
        assert tracing.TRACEPARENT.get() == PARENT
        assert tracing.ids() == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert tracing.TRACEPARENT.get() is None
    with tracing.job_span(Job(id="j2", type="a.b", queue="q", meta={"traceparent": "nope"}), worker_id="w"):
        assert tracing.TRACEPARENT.get() is None


def test_tracing_with_opentelemetry_starts_a_linked_consumer_span_in_the_producer_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    job = Job(id="j1", type="email.send", queue="email", attempt=2, meta={"traceparent": PARENT})
    # The application's own SDK, as the global provider would give it; set for this test only (the
    # real global can be set once per process, and would trace every later test's enqueues).
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with tracing.job_span(job, worker_id="w1"):
        with tracer.start_as_current_span("smtp.send"):
            pass
        current = tracing.TRACEPARENT.get()
    (child, process) = exporter.get_finished_spans()
    assert process.name == "email process" and process.kind == trace.SpanKind.CONSUMER
    assert f"{process.context.trace_id:032x}" == PARENT.split("-")[1]  # joins the producer's trace
    assert [f"{link.context.span_id:016x}" for link in process.links] == [PARENT.split("-")[2]]
    assert process.attributes["messaging.system"] == "ojs" and process.attributes["ojs.job.attempt"] == 2
    assert child.parent is not None and child.parent.span_id == process.context.span_id
    assert current is not None and current.split("-")[2] == f"{process.context.span_id:016x}"


def test_logs_json_lines_carry_job_request_and_trace_fields() -> None:
    formatter = logs.JsonFormatter()

    def line(**extra: object) -> dict[str, object]:
        record = logging.LogRecord("runtime.worker", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
        record.__dict__.update(extra)
        text = formatter.format(record)
        assert "\n" not in text
        decoded: dict[str, object] = msgspec.json.decode(text)
        return decoded

    async def in_a_job() -> dict[str, object]:
        logs.JOB.set(logs.JobFields(job_id="j1", type="a.b", queue="q", attempt=2, worker_id="w1", traceparent=PARENT))
        logs.REQUEST_ID.set("req_1")
        return line()

    plain = line(job_id="j9", queue="x")
    assert plain["message"] == "hello you" and plain["level"] == "warn" and plain["ojs.job.id"] == "j9"
    assert plain["timestamp"].endswith("Z") and "request_id" not in plain  # type: ignore[union-attr]
    scoped = asyncio.run(in_a_job())
    assert (scoped["ojs.job.id"], scoped["ojs.job.type"], scoped["ojs.job.queue"]) == ("j1", "a.b", "q")
    assert (scoped["ojs.job.attempt"], scoped["ojs.worker.id"], scoped["request_id"]) == (2, "w1", "req_1")
    assert scoped["trace_id"] == PARENT.split("-")[1]
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in msgspec.json.decode(formatter.format(record))["exception"]


def test_board_reports_starting_stalled_quiet_and_draining() -> None:
    board = Board(stall_s=60)
    assert board.not_ready() == "starting: no pool has fetched yet"
    board.fetched()
    assert board.not_ready() is None
    board.set_flag(Board.QUIET, True)
    assert board.not_ready() == "quiet"
    board.set_flag(Board.QUIET, False)
    board.set_flag(Board.DRAINING, True)
    assert board.not_ready() == "draining"
    stalled = Board(stall_s=0)
    stalled.fetched()
    assert (stalled.not_ready() or "").startswith("stalled")


def test_metrics_render_adds_the_queue_gauges() -> None:
    text = metrics.render([metrics.QueueSample(queue="q1", counts={"available": 3}, oldest_age_s=2.5),
                           metrics.QueueSample(queue="q2", counts={"available": 0})]).decode()
    assert 'ojs_queue_depth{queue="q1",state="available"} 3.0' in text
    assert 'ojs_queue_oldest_job_age_seconds{queue="q1"} 2.5' in text
    assert 'ojs_queue_oldest_job_age_seconds{queue="q2"} 0.0' in text


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_tally_writes_exactly_what_direct_writes_would() -> None:
    # Given the same counts and observations, written one by one and gathered in a tally
    direct, gathered = CollectorRegistry(), CollectorRegistry()

    def pair(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
        return (Counter("t_total", "t", ["q"], registry=registry),
                Histogram("t_seconds", "t", ["q"], buckets=(0.01, 0.1, 1), registry=registry))

    d_counter, d_hist = pair(direct)
    g_counter, g_hist = pair(gathered)
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 3.0, 250.0]
    tally = metrics.Tally()
    for i, value in enumerate(values):
        queue = "a" if i % 3 else "b"
        d_counter.labels(queue).inc()
        d_hist.labels(queue).observe(value)
        tally.count(g_counter, (queue,))
        tally.observe(g_hist, (queue,), value)
    # When the tally is flushed (no event loop here: each write applies at once)
    tally.flush()
    # Then the exposition is identical: counts, sums and every bucket, edges included
    assert _samples(gathered) == _samples(direct)
    # 0.01 sits on a bound (counted there), 0.010001 just above it
    assert _samples(direct)[("t_seconds_bucket", (("le", "0.01"), ("q", "a")))] == 1


def test_tally_flushes_once_shortly_after_the_first_write() -> None:
    registry = CollectorRegistry()
    counter = Counter("u_total", "u", ["q"], registry=registry)

    async def go() -> tuple[float, float]:
        tally = metrics.Tally(delay_s=0.01)
        for _ in range(5):
            tally.count(counter, ("x",))
        before = counter.labels("x")._value.get()
        async with asyncio.timeout(5):  # the flush the first write scheduled
            while counter.labels("x")._value.get() == before:
                await asyncio.sleep(0.005)
        return before, counter.labels("x")._value.get()

    assert asyncio.run(go()) == (0, 5)
