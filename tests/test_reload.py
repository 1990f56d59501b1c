"""`ojs-run --reload`: a handler file edited under a running runtime is picked up, the pools that
ran the old code drain as on SIGTERM, and no job is lost or run twice. A real `ojs-run`, a real
Redis, a handlers package written to a temporary directory and edited there."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import redis

from runtime import Client
from runtime.job_handle import JobHandle
from tests.fixtures.procs import REPO, Runtime, job, wait_until

HANDLER = '''
import asyncio
import os

import redis.asyncio

from runtime import JobContext, handler

VERSION = {version}
_runs = redis.asyncio.Redis.from_url(os.environ["POOL_TEST_REDIS_URL"])


@handler("reload.job")
async def work(ctx: JobContext, n: int) -> dict[str, int]:
    await _runs.rpush("reload:runs", ctx.job_id)  # every run, to tell a job that ran twice
    await asyncio.sleep(0.05)
    return {{"n": n, "version": VERSION}}
'''


def write_handlers(package: Path, version: int, *, padding: str = "") -> None:
    # A different size with each version: a bytecode cache keyed by mtime and size never hides it.
    (package / "jobs.py").write_text(HANDLER.format(version=version) + padding)


async def enqueue(redis_url: str, first: int, count: int) -> list[str]:
    async with Client(redis_url) as client:
        return [(await client.enqueue_job("reload.job", [n])).id for n in range(first, first + count)]


async def results(redis_url: str, ids: list[str]) -> list[Any]:
    async with Client(redis_url) as client:
        handles: list[JobHandle[Any]] = [client.job(i) for i in ids]
        return await asyncio.gather(*(h.result(timeout=60) for h in handles))


@pytest.mark.slow
def test_reload_runs_the_edited_handler_without_losing_or_repeating_a_job(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path,
) -> None:
    # Given a runtime with --reload serving a handlers package of ours
    package = tmp_path / "reloadable"
    package.mkdir()
    (package / "__init__.py").write_text("from reloadable import jobs  # noqa: F401\n")
    write_handlers(package, 1)
    runtime = Runtime(
        redis_url, "reloadable", "--reload", "--processes", "2", "--concurrency", "3", "--no-http",
        "--drain-timeout", "20", log_path=tmp_path / "ojs-run.log",
        extra_env={"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])},
    )
    try:
        runtime.wait_ready(2)
        wait_until(lambda: "watching for changes" in runtime.log(), what="the reloader to watch")
        # When jobs flow and the handler file is edited under it
        before = asyncio.run(enqueue(redis_url, 0, 60))
        wait_until(lambda: redis_client.llen("reload:runs") > 0, what="the first jobs to run")
        write_handlers(package, 2, padding="\n# edited\n")
        wait_until(lambda: runtime.log().count(" ready: queues ") >= 4, timeout_s=60,
                   what="two new pools after the reload")
        after = asyncio.run(enqueue(redis_url, 60, 30))
        # Then the jobs enqueued after the reload ran the new code
        done_after = asyncio.run(results(redis_url, after))
        assert {r["version"] for r in done_after} == {2}
        # and every job completed, once, at its first attempt: none lost, none run twice
        done_before = asyncio.run(results(redis_url, before))
        assert [r["n"] for r in done_before + done_after] == list(range(90))
        for job_id in before + after:
            record = job(redis_client, job_id)
            assert (record["state"], record["attempt"]) == ("completed", "1"), record
        runs = [r.decode() for r in redis_client.lrange("reload:runs", 0, -1)]
        assert sorted(runs) == sorted(before + after)
        log = runtime.log()
        assert "reloading" in log
        assert log.count("started pool process") == 4  # two, then two for the new code
    finally:
        runtime.stop()
        print(runtime.log())


@pytest.mark.slow
def test_an_edit_that_does_not_import_keeps_the_running_pools(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path,
) -> None:
    package = tmp_path / "reloadable"
    package.mkdir()
    (package / "__init__.py").write_text("from reloadable import jobs  # noqa: F401\n")
    write_handlers(package, 1)
    runtime = Runtime(
        redis_url, "reloadable", "--reload", "--processes", "1", "--no-http", log_path=tmp_path / "ojs-run.log",
        extra_env={"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])},
    )
    try:
        runtime.wait_ready(1)
        wait_until(lambda: "watching for changes" in runtime.log(), what="the reloader to watch")
        # When the edit is a mistake
        (package / "jobs.py").write_text(HANDLER.format(version=2) + "\nthis is not python\n")
        wait_until(lambda: "not reloading" in runtime.log(), what="the reload to be refused")
        # Then the old code goes on serving, and the runtime did not stop
        ids = asyncio.run(enqueue(redis_url, 0, 3))
        assert {r["version"] for r in asyncio.run(results(redis_url, ids))} == {1}
        assert runtime.proc.poll() is None
        assert "jobs.py:" in runtime.log() and "Traceback" not in runtime.log()
        # and once it is fixed, the next save reloads
        write_handlers(package, 3)
        wait_until(lambda: runtime.log().count(" ready: queues ") >= 2, what="the fixed code's pool")
        ids = asyncio.run(enqueue(redis_url, 3, 3))
        assert {r["version"] for r in asyncio.run(results(redis_url, ids))} == {3}
    finally:
        runtime.stop()
        print(runtime.log())
