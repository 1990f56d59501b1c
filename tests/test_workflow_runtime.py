"""Workflows processed by the worker runtime, with a pool process killed on the way."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis
from redis.asyncio import Redis

from runtime import Client, Draft
from runtime.broker.core import Broker
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.config import Settings
from tests.fixtures.procs import Runtime, free_port, integrity_problems, job, run, wait_until

HANDLERS = "tests.fixtures.workflow_handlers"
GROUP_SIZE = 200


@pytest.fixture
def runtime_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ojs-run.log"


def _create_batch(redis_url: str) -> str:
    async def go() -> str:
        async with Client(redis_url) as client:
            flow = await client.batch(
                [Draft(type="wf.item", args=[n]) for n in range(GROUP_SIZE)],
                on_complete=Draft(type="wf.done"), name="batch-under-fire",
            )
            return str(flow["id"])

    return str(run(go()))


def _workflow(redis_url: str, workflow_id: str) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with Client(redis_url) as client:
            return await client.get_workflow(workflow_id)

    result: dict[str, object] = run(go())
    return result


def test_workflow_batch_completes_and_fires_once_when_a_pool_dies(
    redis_url: str, redis_client: redis.Redis, runtime_log: Path,
) -> None:
    # Given a batch of 200 jobs with an on_complete callback, worked by two pools
    workflow_id = _create_batch(redis_url)
    runtime = Runtime(redis_url, HANDLERS, "--processes", "2", "--concurrency", "8",
                      "--http", f"127.0.0.1:{free_port()}", log_path=runtime_log)
    try:
        wait_until(lambda: int(redis_client.get("wftest:item_runs") or 0) >= 40, what="40 items run")
        # When one pool process is killed mid-way
        os.kill(runtime.pool_pids()[0], signal.SIGKILL)
        # Then every job still completes and the callback runs exactly once, with all 200 results
        wait_until(lambda: _workflow(redis_url, workflow_id)["state"] != "running", timeout_s=60,
                   what="the batch to finish")
        flow = _workflow(redis_url, workflow_id)
        assert (flow["state"], flow["jobs_completed"], flow["jobs_failed"]) == ("completed", GROUP_SIZE, 0)
        callback_id = flow["callbacks"]["on_complete"]["job_id"]  # type: ignore[index]
        wait_until(lambda: job(redis_client, callback_id).get("state") == "completed", what="the callback")
        wait_until(lambda: redis_client.llen("{ojs}:workflow-outbox") == 0, what="an empty outbox")
        assert redis_client.lrange("wftest:callback", 0, -1) == [str(GROUP_SIZE).encode()]
        assert int(redis_client.get("wftest:item_runs") or 0) >= GROUP_SIZE
        assert integrity_problems(redis_url) == []
    finally:
        runtime.stop()
        print(runtime.log())


# --- a nested workflow: chain > group > (chain | batch) -----------------------------------------

INNER_CHAINS, INNER_CHAIN_LENGTH, INNER_BATCH = 12, 4, 30


def _step(label: str) -> dict[str, object]:
    return {"type": "wf.step", "args": [label]}


def _nested_shape() -> dict[str, object]:
    """chain(first, group(chain x 12 of 4 steps, batch of 30 with on_complete and on_success),
    last): three levels, 80 steps."""
    chains = [{"type": "chain", "steps": [_step(f"c{c}.{s}") for s in range(INNER_CHAIN_LENGTH)]}
              for c in range(INNER_CHAINS)]
    inner_batch = {"type": "batch", "jobs": [_step(f"b{n}") for n in range(INNER_BATCH)], "callbacks": {
        "on_complete": {"type": "wf.nested_done", "args": ["complete"]},
        "on_success": {"type": "wf.nested_done", "args": ["success"]},
        "on_failure": {"type": "wf.nested_done", "args": ["failure"]},
    }}
    return {"type": "chain", "name": "nested-under-fire", "steps": [
        _step("first"), {"type": "group", "jobs": [*chains, inner_batch]}, {"type": "wf.last", "args": []},
    ]}


def _create_nested(redis_url: str) -> str:
    async def go() -> str:
        client = Redis.from_url(redis_url)
        broker = Broker(client, Settings(redis_url=redis_url))
        try:
            flow = await Workflows(broker).create(msgspec.convert(_nested_shape(), WorkflowRequest))
            return str(flow["id"])
        finally:
            await broker.close()
            await client.aclose()

    return str(run(go()))


def test_a_three_level_nested_workflow_completes_and_fires_its_callbacks_once_when_a_pool_dies(
    redis_url: str, redis_client: redis.Redis, runtime_log: Path,
) -> None:
    # Given: chain(first, group(12 chains of 4, batch of 30 + callbacks), last), worked by two pools
    workflow_id = _create_nested(redis_url)
    labels = {"first"} | {f"c{c}.{s}" for c in range(INNER_CHAINS) for s in range(INNER_CHAIN_LENGTH)} | {
        f"b{n}" for n in range(INNER_BATCH)}
    runtime = Runtime(redis_url, HANDLERS, "--processes", "2", "--concurrency", "8",
                      "--http", f"127.0.0.1:{free_port()}", log_path=runtime_log)
    try:
        wait_until(lambda: int(redis_client.get("wftest:step_runs") or 0) >= 20, what="20 steps run")
        # When: one pool process is killed mid-way
        os.kill(runtime.pool_pids()[0], signal.SIGKILL)
        # Then: the workflow completes; every step ran, and each was counted exactly once
        wait_until(lambda: _workflow(redis_url, workflow_id)["state"] != "running", timeout_s=90,
                   what="the nested workflow to finish")
        flow = _workflow(redis_url, workflow_id)
        total = len(labels) + 1  # and the last step
        assert (flow["state"], flow["completed"], flow["failed"]) == ("completed", total, 0)
        assert {s["state"] for s in flow["steps"]} == {"completed"}  # type: ignore[attr-defined]
        assert {m.decode() for m in redis_client.smembers("wftest:steps_run")} == labels
        # The nested batch's callbacks that apply fired once each, with the batch's 30 results;
        # on_failure never did
        callbacks = flow["callbacks"]  # type: ignore[assignment]
        assert {name: cb["state"] for name, cb in callbacks.items()} == {  # type: ignore[attr-defined]
            "1.12.on_complete": "completed", "1.12.on_success": "completed", "1.12.on_failure": "cancelled"}
        assert sorted(redis_client.lrange("wftest:nested_callbacks", 0, -1)) == [b"complete:30", b"success:30"]
        # The last step saw the first step's result and the group's, per job (a chain's: its last step's)
        first, group = json.loads(redis_client.get("wftest:last_parents") or b"null")
        assert first == {"label": "first"}
        assert group[:INNER_CHAINS] == [{"label": f"c{c}.{INNER_CHAIN_LENGTH - 1}"} for c in range(INNER_CHAINS)]
        assert group[INNER_CHAINS] == [{"label": f"b{n}"} for n in range(INNER_BATCH)]
        wait_until(lambda: redis_client.llen("{ojs}:workflow-outbox") == 0, what="an empty outbox")
        assert integrity_problems(redis_url) == []
    finally:
        runtime.stop()
        print(runtime.log())
