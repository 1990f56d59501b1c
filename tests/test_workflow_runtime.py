"""Workflows processed by the worker runtime, with a pool process killed on the way."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runtime import Client, Draft
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
