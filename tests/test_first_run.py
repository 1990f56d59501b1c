"""A new user's first run: `make run` (``ojs-run handlers_example`` with its embedded Redis and
the HTTP endpoint, as real processes) and what the README and the example tell them to try
against it, as written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from runtime.embedded_redis import EmbeddedRedis, find_server_binary, published_url
from tests.conftest import skip_or_fail
from tests.fixtures.procs import REPO, Runtime, free_port, wait_until

pytestmark = pytest.mark.slow

TERMINAL = ("completed", "discarded", "cancelled")


class MakeRun:
    """One ``ojs-run handlers_example`` as ``make run`` starts it: default flags but the HTTP port,
    and a private state directory standing in for the user's (``$XDG_STATE_HOME/ojs``)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # What a user's shell has: no Redis URL or data dir set; the state home is ours.
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OJS_REDIS_URL", "OJS_DATA_DIR")}
        self.env.update({"XDG_STATE_HOME": str(tmp / "state"), "HOME": str(tmp), "PYTHONPATH": str(REPO)})
        self.runtime = Runtime("", "handlers_example", "--http", f"127.0.0.1:{self.port}", log_path=tmp / "ojs-run.log",
                               embedded=True, extra_env=self.env)

    def state(self, job_id: str) -> str:
        reply = httpx.get(f"{self.base}/ojs/v1/jobs/{job_id}", timeout=5)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["job"]["state"])

    def final_states(self, job_ids: list[str], timeout_s: float = 30.0) -> list[str]:
        """The states of `job_ids` once every one of them has ended."""
        def ended() -> list[str] | None:
            now = [self.state(i) for i in job_ids]
            return now if all(s in TERMINAL for s in now) else None

        found: list[str] = wait_until(ended, timeout_s=timeout_s, what=f"jobs {job_ids} to end")
        return found


def _serves(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    try:
        find_server_binary()
    except Exception as err:
        skip_or_fail(str(err))
    served = MakeRun(tmp_path_factory.mktemp("make-run"))
    try:
        wait_until(lambda: _serves(served.base), timeout_s=30, what="make run to serve")
        yield served
    finally:
        served.runtime.stop()
        print(f"--- ojs-run\n{served.runtime.log()}")


def test_the_example_producer_with_no_argument_enqueues_into_the_running_make_run(make_run: MakeRun) -> None:
    # When the producer runs as documented, with no argument, next to `make run`
    produced = subprocess.run([sys.executable, "-m", "handlers_example.produce"], cwd=REPO, env=make_run.env,
                              capture_output=True, text=True, timeout=60)
    # Then it enqueued its sample there, and the jobs ran to their documented ends
    assert produced.returncode == 0, produced.stderr
    ids = produced.stdout.split()
    assert len(ids) == 6, produced.stdout
    *delivered, gone = make_run.final_states(ids)
    assert delivered == ["completed"] * 5
    assert gone == "discarded"  # the webhook whose endpoint answers 410 Gone


def test_the_embedded_redis_publishes_its_url_while_it_runs(make_embedded_redis: Callable[..., EmbeddedRedis],
                                                             tmp_path: Path) -> None:
    # Given a server on its socket only, as ojs-run starts it
    data_dir = tmp_path / "data"
    server = make_embedded_redis(data_dir=str(data_dir), tcp=False)
    server.start()
    # Then its URL is published in the data dir, for this user only
    assert published_url(str(data_dir)) == server.local_url
    assert stat.S_IMODE((data_dir / "redis.url").stat().st_mode) == 0o600
    # and withdrawn when it stops
    server.stop()
    assert published_url(str(data_dir)) is None


def test_the_example_producer_with_nothing_running_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OJS_REDIS_URL", "OJS_DATA_DIR")}
    env.update({"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    produced = subprocess.run([sys.executable, "-m", "handlers_example.produce"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 1
    assert produced.stderr.count("\n") == 1 and "no embedded Redis runs on" in produced.stderr, produced.stderr
