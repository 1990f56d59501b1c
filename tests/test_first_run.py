"""A new user's first run: `make run` (``ojs-run handlers_example`` with its embedded Redis and
the HTTP endpoint, as real processes) and what the README and the example tell them to try
against it, as written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.embedded_redis import EmbeddedRedis, published_url
from tests.fixtures.make_run import MakeRun, make_run  # noqa: F401  (the fixture)
from tests.fixtures.procs import REPO

pytestmark = pytest.mark.slow


def test_the_example_producer_with_no_argument_enqueues_into_the_running_make_run(make_run: MakeRun) -> None:  # noqa: F811
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
