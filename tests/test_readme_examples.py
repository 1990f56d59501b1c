"""Every example of the README works as written against `make run`: its curl calls and Python
snippets run, in the README's order, against ``ojs-run handlers_example`` with its embedded Redis
and HTTP endpoint (real processes; the README's host:port replaced by the test's), and the jobs
and workflows they create end as they should (read through the HTTP API). Which blocks run is
decided by the rule in :mod:`tests.readme_examples`, never silently."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import skip_or_fail
from tests.fixtures.make_run import TERMINAL, MakeRun, make_run  # noqa: F401  (the fixture)
from tests.fixtures.procs import REPO, wait_until
from tests.readme_examples import NEVER_CODE, RUN_LANGUAGES, Block, blocks

pytestmark = pytest.mark.slow

README = REPO / "README.md"
README_ADDRESSES = ("localhost:8080", "127.0.0.1:8080")
# Top-level await, as in `python -m asyncio`: the README's snippets are written for it.
_RUN_PYTHON = """
import ast, asyncio, sys
code = compile(open(sys.argv[1]).read(), sys.argv[2], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
async def main():
    pending = eval(code, {"__name__": "__main__"})
    if pending is not None:
        await pending
asyncio.run(main())
"""
_SCHEDULED = ("job.enqueued", "job.scheduled")


def runnable(block: Block) -> bool:
    if block.language in NEVER_CODE:
        return False
    assert block.language in RUN_LANGUAGES, f"{block.where}: no rule for this language; run it or mark it"
    if block.not_run is not None:
        assert block.not_run, f"{block.where}: a 'not run' marker needs its reason"
        return False
    return True


class Events:
    """The event stream read through the API, from a cursor on; `seen` keeps what was read."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cursor: str | None = None
        self.seen: list[dict[str, Any]] = []
        self.read()  # from now on
        self.seen.clear()

    def read(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            params = {"limit": "1000", **({"after": self.cursor} if self.cursor else {})}
            reply = httpx.get(f"{self.base}/ojs/v1/events", params=params, timeout=5)
            assert reply.status_code == 200, reply.text
            page = reply.json()
            found += page["events"]
            self.cursor = page["cursor"] or self.cursor
            if not page["has_more"]:
                self.seen += found
                return found


def _get(base: str, path: str) -> dict[str, Any]:
    reply = httpx.get(f"{base}{path}", timeout=5)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def run_block(block: Block, serving: MakeRun, work: Path) -> subprocess.CompletedProcess[str]:
    code = block.code
    for address in README_ADDRESSES:
        code = code.replace(address, f"127.0.0.1:{serving.port}")
    env = dict(serving.env)
    if block.language == "sh":
        if shutil.which("curl") is None:
            skip_or_fail(f"{block.where} needs curl, which is not installed")
        # curl as written, but a 4xx or 5xx answer fails the command (and so the block)
        shim = work / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "curl").write_text(f'#!/bin/sh\nexec {shutil.which("curl")} --fail-with-body "$@"\n')
        (shim / "curl").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    elif block.file is not None:
        # A module: saved where it says, imported in a fresh interpreter
        path = work / "files" / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        env["PYTHONPATH"] = f"{work / 'files'}{os.pathsep}{env['PYTHONPATH']}"
        module = block.file.removesuffix(".py").replace("/", ".")
        argv = [sys.executable, "-c", f"import {module}"]
    else:
        script = work / f"block-{block.line}.py"
        script.write_text(code)
        argv = [sys.executable, "-c", _RUN_PYTHON, str(script), block.where]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)


def settled(serving: MakeRun, events: Events, jobs: set[str], workflows: set[str]) -> dict[str, str] | None:
    """Once every workflow and every job the block created has ended: the jobs' final states.
    Jobs that workflows create later are picked up from the events as they appear."""
    for event in events.read():
        if event["type"] in _SCHEDULED:
            jobs.add(event["subject"])
        elif event["type"] == "workflow.started":
            workflows.add(event["subject"])
    for workflow_id in workflows:
        if _get(serving.base, f"/ojs/v1/workflows/{workflow_id}")["workflow"]["state"] == "running":
            return None
    found = {job_id: _get(serving.base, f"/ojs/v1/jobs/{job_id}")["job"]["state"] for job_id in jobs}
    if not all(state in TERMINAL for state in found.values()):
        return None
    if events.read():  # something happened meanwhile (a workflow's next job): look again
        return None
    return found


def test_the_readme_examples_work_as_written_against_make_run(make_run: MakeRun, tmp_path: Path) -> None:  # noqa: F811
    every = blocks(README)
    assert every, "no code blocks found in README.md"
    skipped = [(b.where, b.not_run or "not code") for b in every if not runnable(b)]
    print("README blocks not run:", *(f"{where}: {why}" for where, why in skipped), sep="\n  ")
    ran = 0
    for block in filter(runnable, every):
        events = Events(make_run.base)
        # When the block runs as written
        done = run_block(block, make_run, tmp_path)
        assert done.returncode == 0, f"{block.where} failed:\n{block.code}\n{done.stdout}\n{done.stderr}"
        ran += 1
        print(f"ran {block.where}")
        if block.file is not None:
            continue
        # Then what it created ends as meant: workflows completed; jobs completed, or cancelled
        # by the block itself
        jobs: set[str] = set()
        workflows: set[str] = set()
        final = wait_until(functools.partial(settled, make_run, events, jobs, workflows), timeout_s=60,
                           what=f"the jobs of {block.where} to end")
        assert final, f"{block.where} created no job"
        assert {_get(make_run.base, f"/ojs/v1/workflows/{w}")["workflow"]["state"] for w in workflows} <= {"completed"}
        wrong = {job_id: state for job_id, state in final.items() if state != "completed"}
        cancelled = {e["subject"] for e in events.seen if e["type"] == "job.cancelled"}
        assert set(wrong) <= cancelled and "completed" in final.values(), (
            f"{block.where}: {wrong}\n" + "\n".join(
                f"{job_id}: {_get(make_run.base, f'/ojs/v1/jobs/{job_id}')['job'].get('error')}" for job_id in wrong))
    assert ran, "no README example was run"
