"""/metrics of a real `ojs-run` with two pool processes: exact counts summed over processes.

Jobs complete, fail, retry, time out and get dead-lettered in both pools; an external worker
fetches, acks and nacks over HTTP; one pool is SIGKILLed and replaced. Every wait is a condition
with a deadline; counts are compared exactly once they have settled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.procs import Runtime, free_port, states, wait_until
from tests.fixtures.procs import job as job_hash

pytestmark = pytest.mark.slow

HANDLERS = "tests.fixtures.metrics_handlers"
JOB_COUNTERS = (
    "ojs_job_enqueued_total", "ojs_job_started_total", "ojs_job_completed_total", "ojs_job_failed_total",
    "ojs_job_retried_total", "ojs_job_dead_lettered_total", "ojs_job_cancelled_total", "ojs_job_timed_out_total",
)
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Iterator[tuple[Runtime, str]]:
    port = free_port()
    rt = Runtime(redis_url, HANDLERS, "--processes", "2", "--concurrency", "1", "--queues", "metrics",
                 "--http", f"127.0.0.1:{port}", "--log-format", "json", log_path=tmp_path / "ojs-run.log")
    yield rt, f"http://127.0.0.1:{port}"
    rt.stop()
    print(rt.log())  # shown when the test failed


def scrape(base: str) -> Scrape:
    """Every sample, summed over the `pid` label (live gauges are per process)."""
    response = httpx.get(f"{base}/metrics")
    assert response.headers["content-type"] == "text/plain"
    out: Scrape = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k != "pid"))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def value(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def job_counts(scraped: Scrape) -> dict[tuple[str, str, str], float]:
    """(counter, queue, type) -> count, for every job counter series that is not zero."""
    out = {}
    for (name, labels), count in scraped.items():
        if name in JOB_COUNTERS and count:
            found = dict(labels)
            out[(name.removeprefix("ojs_job_").removesuffix("_total"), found["queue"], found["type"])] = count
    return out


def expected(rows: dict[str, dict[str, int]], queue: str = "metrics") -> dict[tuple[str, str, str], float]:
    return {(counter, queue, job_type): float(n) for job_type, counts in rows.items() for counter, n in counts.items()}


def enqueue(base: str, jobs: list[dict[str, Any]]) -> list[str]:
    response = httpx.post(f"{base}/ojs/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 201, response.text
    return [job["id"] for job in response.json()["jobs"]]


def job(job_type: str, *args: Any, queue: str = "metrics", **retry: Any) -> dict[str, Any]:
    return {"type": job_type, "args": list(args), "options": {"queue": queue, **({"retry": retry} if retry else {})}}


def settled(current: dict[tuple[str, str, str], float], want: dict[tuple[str, str, str], float], base: str) -> bool:
    current.clear()
    current.update(job_counts(scrape(base)))
    return current == want


def test_metrics_are_exact_sums_over_pool_processes_across_a_replacement(
    runtime: tuple[Runtime, str], redis_client: redis.Redis,
) -> None:
    rt, base = runtime
    rt.wait_ready(2)
    first_pids = rt.pool_pids()
    # Given jobs that complete, fail, retry once, time out and get dead-lettered, and a
    # rendezvous pair that must run in both processes at once
    ids = enqueue(base, [
        *(job("m.ok") for _ in range(3)),
        *(job("m.fail", max_attempts=1) for _ in range(2)),
        *(job("m.retry") for _ in range(2)),
        job("m.timeout", max_attempts=1),
        job("m.fail", max_attempts=1, on_exhaustion="dead_letter"),
        job("m.meet", "r1"), job("m.meet", "r1"),
    ])
    # And a job whose trace context comes from the enqueue request's headers
    traced = httpx.post(f"{base}/ojs/v1/jobs", json=job("m.trace"), headers={"traceparent": TRACEPARENT}).json()["job"]
    assert traced["meta"]["traceparent"] == TRACEPARENT
    idle_id, *external = enqueue(base, [job("m.ok", queue="idle"), *(job("ext.work", queue="external") for _ in range(4))])
    # And an external worker over HTTP: one cancelled, one acked, one failed for good, one to retry
    assert httpx.delete(f"{base}/ojs/v1/jobs/{external[3]}").status_code == 200
    for error in (None, {"message": "bad input", "retryable": False}, {"message": "try again"}):
        fetched = httpx.post(f"{base}/ojs/v1/workers/fetch", json={"queues": ["external"], "worker_id": "ext-1"}).json()
        job_id = fetched["jobs"][0]["id"]
        verb, body = ("ack", {"job_id": job_id}) if error is None else ("nack", {"job_id": job_id, "error": error})
        assert httpx.post(f"{base}/ojs/v1/workers/{verb}", json={**body, "worker_id": "ext-1"}).status_code == 200
    # When everything has run
    want = expected({
        "m.ok": {"enqueued": 3, "started": 3, "completed": 3},
        "m.fail": {"enqueued": 3, "started": 3, "failed": 3, "dead_lettered": 1},
        "m.retry": {"enqueued": 2, "started": 4, "retried": 2, "completed": 2},
        "m.timeout": {"enqueued": 1, "started": 1, "failed": 1, "timed_out": 1},
        "m.meet": {"enqueued": 2, "started": 2, "completed": 2},
        "m.trace": {"enqueued": 1, "started": 1, "completed": 1},
    })
    want |= expected({"m.ok": {"enqueued": 1}}, queue="idle")
    want |= expected({"ext.work": {"enqueued": 4, "cancelled": 1, "started": 3, "completed": 1, "failed": 1,
                                   "retried": 1}}, queue="external")
    current: dict[tuple[str, str, str], float] = {}
    try:
        wait_until(lambda: settled(current, want, base), what="the first batch's counts")
    finally:
        print("counts:", sorted(current.items()))
    # Then the counts are exact, and both pool processes ran jobs
    assert all(state in ("completed", "discarded") for state in states(redis_client, ids))
    assert {int(p) for p in redis_client.smembers("mtest:meet:r1")} == set(first_pids)
    scraped = scrape(base)
    assert value(scraped, "ojs_job_duration_seconds_count", queue="metrics", type="m.ok", outcome="completed") == 3
    assert value(scraped, "ojs_job_duration_seconds_count", queue="metrics", type="m.retry", outcome="retried") == 2
    assert value(scraped, "ojs_job_duration_seconds_count", queue="metrics", type="m.fail",
                 outcome="dead_lettered") == 1
    assert value(scraped, "ojs_job_queue_time_seconds_count", queue="metrics", type="m.retry") == 4
    assert value(scraped, "ojs_queue_depth", queue="idle", state="available") == 1
    assert value(scraped, "ojs_queue_depth", queue="metrics", state="completed") == 8
    assert value(scraped, "ojs_queue_oldest_job_age_seconds", queue="idle") >= 0
    assert states(redis_client, [idle_id]) == ["available"]
    # The sync handler saw the producer's trace context in its thread
    result = msgspec.json.decode(job_hash(redis_client, traced["id"])["result"])
    assert result == {"meta": TRACEPARENT, "current": TRACEPARENT}
    # Logs are one JSON object per line; job lines carry the job's fields and trace id
    lines = [msgspec.json.decode(line) for line in rt.log().splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(rt.log().splitlines())
    failure = next(line for line in lines if line.get("ojs.job.type") == "m.fail")
    assert failure["level"] == "error" and failure["ojs.job.queue"] == "metrics"
    assert failure["ojs.job.attempt"] == 1 and failure["ojs.worker.id"].startswith("worker_")

    # When one pool process is killed and replaced
    os.kill(first_pids[0], signal.SIGKILL)
    rt.wait_ready(3)
    survivors = [p for p in rt.pool_pids() if p != first_pids[0]]
    wait_until(lambda: _slot_pids(base) == set(survivors), what="the dead pool's live gauges to go")
    # And more jobs run in the survivor and the replacement
    enqueue(base, [job("m.meet", "r2"), job("m.meet", "r2"), job("m.ok"), job("m.ok")])
    want[("enqueued", "metrics", "m.meet")] = want[("started", "metrics", "m.meet")] = 4
    want[("completed", "metrics", "m.meet")] = 4
    want[("enqueued", "metrics", "m.ok")] = want[("started", "metrics", "m.ok")] = 5
    want[("completed", "metrics", "m.ok")] = 5
    try:
        wait_until(lambda: settled(current, want, base), what="the second batch's counts")
    finally:
        print("counts:", sorted(current.items()))
    # Then the dead process's counts are still in the sums, and the restart is counted
    assert {int(p) for p in redis_client.smembers("mtest:meet:r2")} == set(survivors)
    scraped = scrape(base)
    assert value(scraped, "ojs_pool_restarts_total", reason="crashed") == 1
    assert value(scraped, "ojs_pool_slots", state="busy") + value(scraped, "ojs_pool_slots", state="free") == 2


def _slot_pids(base: str) -> set[int]:
    text = httpx.get(f"{base}/metrics").text
    return {
        int(sample.labels["pid"])
        for family in text_string_to_metric_families(text) if family.name == "ojs_pool_slots"
        for sample in family.samples
    }
