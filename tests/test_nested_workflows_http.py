"""Nested workflows and workflow bodies as real clients send them, over HTTP (a real
`python -m runtime` process on this test's Redis database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker_process import BrokerProcess

OJS_JSON = {"Content-Type": "application/openjobspec+json"}


@pytest.fixture
def http(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    server = BrokerProcess(redis_url, tmp_path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers=OJS_JSON, timeout=10) as client:
            yield client
    finally:
        print(server.log_tail())  # shown when the test failed
        server.stop()


def _fetch(http: httpx.Client, queue: str, count: int = 1) -> list[dict[str, Any]]:
    reply = http.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": count, "worker_id": "w1"})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["jobs"])


def _ack(http: httpx.Client, job: dict[str, Any], result: Any) -> None:
    reply = http.post("/ojs/v1/workers/ack", json={"job_id": job["id"], "result": result})
    assert reply.status_code == 200, reply.text


def _workflow(http: httpx.Client, workflow_id: str) -> dict[str, Any]:
    reply = http.get(f"/ojs/v1/workflows/{workflow_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["workflow"])


def test_the_js_sdk_chain_with_a_group_step_runs_in_order_and_passes_results(http: httpx.Client) -> None:
    # Given: exactly what the JS SDK sends for chain(a, group(b1, b2), c) (object args wrapped
    # into an array, a nested part with no name)
    body = {"type": "chain", "steps": [
        {"type": "etl.a", "args": [{"source": "api"}]},
        {"type": "group", "jobs": [{"type": "etl.b1", "args": []}, {"type": "etl.b2", "args": []}]},
        {"type": "etl.c", "args": []},
    ]}
    reply = http.post("/ojs/v1/workflows", json=body)
    assert reply.status_code == 201, reply.text
    flow = reply.json()["workflow"]
    assert (flow["type"], flow["state"], flow["total"]) == ("chain", "running", 4)
    # When / Then: only a runs first
    (a,) = _fetch(http, "default", 5)
    assert a["type"] == "etl.a"
    _ack(http, a, {"rows": 10})
    # both group jobs become runnable together, each with a's result
    group = _fetch(http, "default", 5)
    assert sorted(j["type"] for j in group) == ["etl.b1", "etl.b2"]
    assert all(j["parent_results"] == [{"rows": 10}] for j in group)
    by_type = {j["type"]: j for j in group}
    _ack(http, by_type["etl.b2"], {"part": 2})
    assert _fetch(http, "default", 5) == []  # c waits for the whole group
    _ack(http, by_type["etl.b1"], {"part": 1})
    # c sees a's result and the group's results, in job order
    (c,) = _fetch(http, "default", 5)
    assert c["type"] == "etl.c"
    assert c["parent_results"] == [{"rows": 10}, [{"part": 1}, {"part": 2}]]
    _ack(http, c, None)
    done = _workflow(http, flow["id"])
    assert (done["state"], done["completed"], done["failed"]) == ("completed", 4, 0)
    assert [s["id"] for s in done["steps"]] == ["0", "1.0", "1.1", "2"]


def test_workflow_steps_and_callbacks_without_args_are_accepted_as_empty_args(http: httpx.Client) -> None:
    # Given: the reference README's bodies, whose steps carry no args
    chain = http.post("/ojs/v1/workflows", json={"type": "chain", "steps": [{"type": "s.one"}, {"type": "s.two"}]})
    assert chain.status_code == 201, chain.text
    batch = http.post("/ojs/v1/workflows", json={
        "type": "batch", "jobs": [{"type": "b.one", "options": {"queue": "bq"}}],
        "callbacks": {"on_complete": {"type": "b.done", "options": {"queue": "bq"}}},
    })
    assert batch.status_code == 201, batch.text
    # Then: their jobs run with args []
    (first,) = _fetch(http, "default")
    assert (first["type"], first["args"]) == ("s.one", [])
    (item,) = _fetch(http, "bq")
    assert (item["type"], item["args"]) == ("b.one", [])
    _ack(http, item, None)
    (callback,) = _fetch(http, "bq")
    assert (callback["type"], callback["args"]) == ("b.done", [])


def test_workflow_steps_with_args_that_are_not_an_array_are_still_refused(http: httpx.Client) -> None:
    reply = http.post("/ojs/v1/workflows", json={"type": "chain", "steps": [{"type": "s.one", "args": {"a": 1}}]})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_request"


def _nested(depth: int) -> dict[str, Any]:
    """A chain of groups of chains ... `depth` levels deep (the outermost is level 1)."""
    part: dict[str, Any] = {"type": "job.leaf", "args": []}
    for level in range(depth, 0, -1):
        kind = "chain" if level % 2 else "group"
        part = {"type": kind, ("steps" if kind == "chain" else "jobs"): [part, {"type": f"job.l{level}", "args": []}]}
    return part


def test_nesting_up_to_the_documented_maximum_is_accepted_and_deeper_is_a_clear_400(http: httpx.Client) -> None:
    from runtime.broker.workflows import MAX_NESTING_DEPTH

    assert MAX_NESTING_DEPTH >= 3
    ok = http.post("/ojs/v1/workflows", json=_nested(MAX_NESTING_DEPTH))
    assert ok.status_code == 201, ok.text
    too_deep = http.post("/ojs/v1/workflows", json=_nested(MAX_NESTING_DEPTH + 1))
    assert too_deep.status_code == 400, too_deep.text
    error = too_deep.json()["error"]
    assert error["code"] == "invalid_request"
    assert f"at most {MAX_NESTING_DEPTH} levels" in error["message"]


def test_a_nested_part_that_is_malformed_is_a_400_that_names_it(http: httpx.Client) -> None:
    bad = [
        {"type": "chain", "steps": [{"type": "a", "args": []}, {"type": "group", "jobs": []}]},
        {"type": "chain", "steps": [{"type": "a", "args": []}, {"jobs": [{"type": "b", "args": []}]}]},
        {"type": "chain", "steps": [{"type": "batch", "jobs": [{"type": "b", "args": []}]}]},
        {"type": "group", "jobs": [{"type": "chain", "steps": [{"type": "x", "args": "no"}]}]},
        {"steps": [{"id": "s", "type": "group", "jobs": [{"type": "b", "args": []}]}]},
    ]
    for body in bad:
        reply = http.post("/ojs/v1/workflows", json=body)
        assert reply.status_code == 400, (body, reply.text)
        assert reply.json()["error"]["code"] == "invalid_request", reply.text
