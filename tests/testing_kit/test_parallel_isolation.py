"""Two real-mode tests running at once on one Redis under pytest-xdist never see each other's
jobs; under a shared key prefix the same two tests do, and fail."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow  # two child pytest runs with two xdist workers each

PAIR = Path(__file__).with_name("parallel_pair.py")
SHARED_STORE = '''
import pytest

@pytest.fixture
def ojs_key_prefix() -> str:
    return "{ojs-test-shared}:"
'''


def run_pair(tmp_path: Path, redis_url: str, conftest: str = "") -> subprocess.CompletedProcess[str]:
    """`pytest -n 2` on the pair, in a directory of its own (none of this repo's conftests)."""
    shutil.copy(PAIR, tmp_path / "test_pair.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(conftest)
    env = {**os.environ, "PAIR_RUN": secrets.token_hex(4), "PAIR_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # only the two plugins it needs: a faster start
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist", "-n", "2", "--dist", "load", "-p", "runtime.testing.pytest_plugin",
         "-p", "no:cacheprovider", "--ojs-redis-url", redis_url, "-q",
         "-rN",  # no short summary (its lines repeat each failure, in full under CI=true)
         "test_pair.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def xdist() -> None:
    if importlib.util.find_spec("xdist") is None:
        skip_or_fail("pytest-xdist is not installed (it is in the dev extra)")


@pytest.mark.usefixtures("xdist")
def test_parallel_tests_on_one_redis_see_only_their_own_jobs(tmp_path: Path, redis_url: str) -> None:
    done = run_pair(tmp_path, redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


@pytest.mark.usefixtures("xdist")
def test_the_same_pair_under_a_shared_store_sees_the_other_tests_jobs(tmp_path: Path, redis_url: str) -> None:
    done = run_pair(tmp_path, redis_url, conftest=SHARED_STORE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("expected 3 enqueued job(s) matching 'pair.job', found 6") == 2, done.stdout
