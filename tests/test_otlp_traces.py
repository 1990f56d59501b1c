"""Traces exported over OTLP: `ojs-server` and `ojs-run` as real processes, their spans received
by a real OTLP/HTTP endpoint in this test (tests/fixtures/otlp_receiver.py).

What a collector must be able to put together: the caller's request -> the SERVER span (named by
route template) -> the PRODUCER span -> the CONSUMER span in a forked pool process; one PRODUCER
span per batch, linked to the contexts its jobs brought; a workflow step's span linked to the
step before it; and an attempt's outcome on its span."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime import trace_export, tracing
from tests.conftest import skip_or_fail
from tests.fixtures.broker_process import serving
from tests.fixtures.procs import Runtime

pytestmark = pytest.mark.slow

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OWN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HANDLERS = "tests.fixtures.traced_handlers"
QUICK_RETRY = {"max_attempts": 2, "initial_interval": "PT0.01S", "max_interval": "PT0.01S", "jitter": False}


def _otel_extra() -> None:
    for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            skip_or_fail("the otel extra is not installed (`make install` installs it)")


@pytest.fixture
def receiver() -> Iterator[Any]:
    _otel_extra()
    from tests.fixtures.otlp_receiver import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def endpoint(redis_url: str, tmp_path: Path, receiver: Any) -> Iterator[str]:
    """`ojs-server` (the HTTP endpoint) and `ojs-run` with two forked pools, both exporting."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    runtime = Runtime(redis_url, HANDLERS, "--no-http", "--processes", "2", log_path=tmp_path / "ojs-run.log",
                      extra_env={**env, "OTEL_SERVICE_NAME": "traced-workers"})
    try:
        with serving(redis_url, tmp_path, env=env) as server:
            runtime.wait_ready(2)
            yield server.url
    finally:
        runtime.stop()
        print(runtime.log())


def _enqueue(url: str, body: dict[str, Any], path: str = "/ojs/v1/jobs") -> dict[str, Any]:
    reply = httpx.post(url + path, json=body, headers={"traceparent": CALLER}, timeout=10)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def _ids(traceparent: str) -> tuple[str, str]:
    """(trace id, span id): the flags may differ (the SDK sets the random-trace-id bit)."""
    _version, trace_id, span_id, _flags = traceparent.split("-")
    return trace_id, span_id


def _one(spans: list[Any]) -> Any:
    assert len(spans) == 1, spans
    return spans[0]


def test_http_enqueue_to_forked_pool_is_one_trace(endpoint: str, receiver: Any) -> None:
    # Given a caller's context on the request, an enqueue over HTTP and a pool that runs the job
    job_id = _enqueue(endpoint, {"type": "traced.ok", "args": [1], "options": {"queue": "traced"}})["job"]["id"]
    info = httpx.get(f"{endpoint}/ojs/v1/jobs/{job_id}", timeout=10)
    assert info.status_code == 200

    consumer = _one(receiver.wait_for(lambda s: s.kind == "CONSUMER" and s.attributes.get("ojs.job.id") == job_id))
    # Then the request's SERVER span is the caller's child and named by its route template
    server = _one(receiver.wait_for(lambda s: s.kind == "SERVER" and s.name == "POST /ojs/v1/jobs"))
    assert (server.trace_id, server.parent_span_id) == (CALLER.split("-")[1], CALLER.split("-")[2])
    assert server.attributes["http.route"] == "/ojs/v1/jobs"
    assert server.attributes["http.response.status_code"] == 201
    assert server.resource["service.name"] == "ojs-runtime"
    # the read too: never the raw path, which names the job
    read = _one(receiver.wait_for(lambda s: s.kind == "SERVER" and s.attributes.get("http.route") == "/ojs/v1/jobs/{job_id}"))
    assert read.name == "GET /ojs/v1/jobs/{job_id}"
    assert not [s for s in receiver.spans if job_id in s.name]
    # the PRODUCER span is the SERVER span's child, with the required attributes
    producer = _one(receiver.wait_for(lambda s: s.kind == "PRODUCER" and s.attributes.get("ojs.job.id") == job_id))
    assert producer.name == "traced enqueue"
    assert (producer.trace_id, producer.parent_span_id) == (server.trace_id, server.span_id)
    assert producer.attributes["messaging.system"] == "ojs"
    assert producer.attributes["messaging.operation.type"] == "publish"
    assert producer.attributes["messaging.destination.name"] == "traced"
    assert producer.attributes["ojs.job.type"] == "traced.ok"
    # and the CONSUMER span, made in a forked pool of ojs-run, is the PRODUCER's child and links to it
    assert consumer.name == "traced process"
    assert consumer.resource["service.name"] == "traced-workers"
    assert consumer.resource["ojs.process.role"] == "pool"
    assert (consumer.trace_id, consumer.parent_span_id) == (producer.trace_id, producer.span_id)
    assert [(link.trace_id, link.span_id) for link in consumer.links] == [(producer.trace_id, producer.span_id)]
    assert consumer.attributes["ojs.job.outcome"] == "completed"
    assert consumer.attributes["ojs.job.attempt"] == 1
    assert consumer.attributes["ojs.worker.id"]
    assert consumer.status == "OK"
    # the job itself carries the PRODUCER span's context, as any OJS worker would read it
    stored = httpx.get(f"{endpoint}/ojs/v1/jobs/{job_id}", timeout=10).json()["job"]
    assert _ids(stored["meta"]["traceparent"]) == (producer.trace_id, producer.span_id)


def test_batch_is_one_span_linked_to_the_contexts_its_jobs_brought(endpoint: str, receiver: Any) -> None:
    # Given a batch of three jobs, one of which carries a trace context of its own
    jobs = [{"type": "traced.ok", "args": [n], "options": {"queue": "traced"}} for n in (1, 2, 3)]
    jobs[2]["meta"] = {"traceparent": OWN}
    ids = [job["id"] for job in _enqueue(endpoint, {"jobs": jobs}, "/ojs/v1/jobs/batch")["jobs"]]

    consumers = receiver.wait_for(lambda s: s.kind == "CONSUMER" and s.attributes.get("ojs.job.id") in ids, count=3)
    # Then the batch made one PRODUCER span, linked to the context the third job brought
    batch = _one(receiver.wait_for(lambda s: s.kind == "PRODUCER" and s.name == "traced enqueue_batch"))
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["ojs.job.ids"] == ids
    assert [(link.trace_id, link.span_id) for link in batch.links] == [_ids(OWN)]
    assert not [s for s in receiver.spans if s.kind == "PRODUCER" and s.attributes.get("ojs.job.id") in ids]
    server = _one([s for s in receiver.spans if s.name == "POST /ojs/v1/jobs/batch"])
    assert batch.parent_span_id == server.span_id
    # and each job's CONSUMER span descends from the context the job carries
    by_job = {span.attributes["ojs.job.id"]: span for span in consumers}
    for job_id in ids[:2]:
        assert (by_job[job_id].trace_id, by_job[job_id].parent_span_id) == (batch.trace_id, batch.span_id)
    assert (by_job[ids[2]].trace_id, by_job[ids[2]].parent_span_id) == _ids(OWN)


def test_workflow_steps_link_to_the_step_before_and_attempts_carry_their_outcome(
        endpoint: str, receiver: Any) -> None:
    # Given a chain of three steps over HTTP, and a job whose first attempt fails
    reply = httpx.post(f"{endpoint}/ojs/v1/workflows", timeout=10, json={
        "type": "chain", "steps": [{"type": "traced.step", "args": [n]} for n in range(3)]})
    assert reply.status_code == 201, reply.text
    workflow = reply.json()["workflow"]
    flaky = _enqueue(endpoint, {"type": "traced.flaky", "args": [], "options": {"retry": QUICK_RETRY}})["job"]["id"]

    steps = receiver.wait_for(lambda s: s.kind == "CONSUMER" and s.attributes.get("ojs.workflow.id") == workflow["id"],
                              count=3)
    # Then the workflow was created under one PRODUCER span, which every step's job carries
    created = _one(receiver.wait_for(lambda s: s.name == "ojs.workflow.create"))
    assert created.kind == "PRODUCER"
    assert created.attributes["ojs.workflow.type"] == "chain"
    by_index = {s.attributes["ojs.workflow.step"]: s for s in steps}
    assert sorted(by_index) == [0, 1, 2]
    for span in by_index.values():
        assert (span.trace_id, span.parent_span_id) == (created.trace_id, created.span_id)
    # and each step after the first links to the span of the step before it
    assert [link for link in by_index[0].links if link.attributes.get("ojs.link.kind") == "workflow_step"] == []
    for n in (1, 2):
        step_links = [(link.trace_id, link.span_id) for link in by_index[n].links
                      if link.attributes.get("ojs.link.kind") == "workflow_step"]
        assert step_links == [(by_index[n - 1].trace_id, by_index[n - 1].span_id)]
    stored = httpx.get(f"{endpoint}/ojs/v1/jobs/{by_index[1].attributes['ojs.job.id']}", timeout=10).json()["job"]
    assert _ids(stored["meta"]["ojs.workflow.trace_origin"]) == (created.trace_id, created.span_id)

    # and a failed attempt's span is an error with its outcome (retry), the next one completed
    attempts = receiver.wait_for(lambda s: s.kind == "CONSUMER" and s.attributes.get("ojs.job.id") == flaky, count=2)
    first, second = sorted(attempts, key=lambda s: s.attributes["ojs.job.attempt"])
    assert (first.status, first.attributes["ojs.job.outcome"]) == ("ERROR", "retry")
    assert first.attributes["error.type"] == "ValueError"
    assert first.attributes["error.message"] == "first attempt fails"
    assert first.attributes["ojs.job.error.attempt"] == 1
    assert [name for name, _attrs in first.events] == ["exception"]
    assert "Traceback" in first.events[0][1]["exception.stacktrace"]
    assert (second.status, second.attributes["ojs.job.outcome"]) == ("OK", "completed")


def test_client_enqueue_makes_one_producer_span_whose_context_the_jobs_carry(redis_url: str) -> None:
    # Given a process that records spans (in memory here), and the Python Client
    _otel_extra()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from runtime.client import Client, Draft

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def go() -> tuple[str | None, list[str | None], dict[str, Any], dict[str, Any]]:
        async with Client(redis_url) as client:
            one = await client.enqueue("traced.ok", [1], queue="traced")
            many = await client.enqueue_many([Draft(type="traced.ok", options={"queue": "traced"}),
                                              Draft(type="traced.ok", meta={"traceparent": OWN})])
            assert one is not None and many[0] is not None
            return one, many, await client.get(one), await client.get(many[1] or "")

    tracing.enable(provider.get_tracer("test"))
    try:
        one, many, stored_one, stored_own = asyncio.run(go())
    finally:
        tracing.disable()
    # Then each call made one PRODUCER span, and the jobs carry its context (or their own)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"traced enqueue", "enqueue_batch"}
    single = spans["traced enqueue"]
    assert single.attributes["ojs.job.id"] == one
    assert _ids(stored_one["meta"]["traceparent"]) == (f"{single.context.trace_id:032x}", f"{single.context.span_id:016x}")
    batch = spans["enqueue_batch"]
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert [f"{link.context.trace_id:032x}" for link in batch.links] == [OWN.split("-")[1]]
    assert stored_own["meta"]["traceparent"] == OWN


def test_tracing_is_asked_for_by_the_endpoint_or_the_switch() -> None:
    assert not trace_export.wanted({})
    assert trace_export.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert trace_export.wanted({"OJS_OTEL_ENDPOINT": "http://collector:4318"})
    assert trace_export.wanted({"OJS_OTEL_ENABLED": "true"})
    assert not trace_export.wanted({"OJS_OTEL_ENABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    # and without it nothing records: no span, no context put into a job
    assert not tracing.enabled()
    with tracing.producer_span(exporting_only=True) as producer:
        assert producer is None
