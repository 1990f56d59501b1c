"""The official conformance levels 0-4 against `ojs-server` on a real Redis Cluster of three
primaries (tests/fixtures/redis_cluster.py), through a ``redis+cluster://`` URL naming every node.

Each level gets a server and a namespace of its own (``{ojs-l<n>}:``, a slot of its own, so the
five spread over the three primaries); the runner's reset before each test deletes that
namespace's keys, as FLUSHDB would on a single Redis. The levels run side by side in background
threads from the module's start, like tests/test_conformance_levels.py does on a single Redis.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary
from tests.conformance.runner import Report, run_suites
from tests.conftest import skip_or_fail
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.cluster_keys import clear_namespace, cluster_client
from tests.fixtures.redis_cluster import LocalCluster
from tests.test_conformance_levels import KNOWN_UNPASSABLE, SUITE_TIMEOUT_S, suites_root

pytestmark = pytest.mark.conformance

LEVELS = ("level-0-core", "level-1-reliable", "level-2-scheduled", "level-3-workflows", "level-4-advanced")


def _prefix(level: str) -> str:
    return "{ojs-l" + level.split("-")[1] + "}:"


def _run_level(level: str, server: BrokerProcess, seed_url: str) -> Report:
    server.wait_ready()
    store = cluster_client(seed_url)
    try:
        return run_suites(server.url, suites_root() / level, reset=functools.partial(clear_namespace, store, _prefix(level)))
    finally:
        store.close()


@dataclass
class ClusterRun:
    reports: dict[str, tuple[Future[Report], BrokerProcess]]
    owners: dict[str, str]  # level -> the node that holds its namespace


@pytest.fixture(scope="module")
def cluster_run() -> Iterator[ClusterRun]:
    if not suites_root().is_dir():
        skip_or_fail(f"conformance suites not found at {suites_root()} (set OJS_CONFORMANCE_SUITES)")
    try:
        find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    log_dir = Path(tempfile.mkdtemp(prefix="ojs-cluster-conformance-"))
    with LocalCluster() as cluster:
        owners = {level: cluster.node_for_slot(cluster.slot_of(_prefix(level))).name for level in LEVELS}
        servers = {level: BrokerProcess(cluster.seed_url, log_dir, env={"OJS_KEY_PREFIX": _prefix(level)})
                   for level in LEVELS}
        pool = ThreadPoolExecutor(max_workers=len(LEVELS), thread_name_prefix="cluster-conformance")
        try:
            yield ClusterRun({level: (pool.submit(_run_level, level, server, cluster.seed_url), server)
                              for level, server in servers.items()}, owners)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for server in servers.values():
                server.stop()


def test_the_namespaces_of_the_levels_spread_over_the_primaries(cluster_run: ClusterRun) -> None:
    assert len(set(cluster_run.owners.values())) == 3, cluster_run.owners


@pytest.mark.parametrize("level", LEVELS)
def test_conformance_level_passes_on_a_cluster(
    level: str, cluster_run: ClusterRun) -> None:
    future, server = cluster_run.reports[level]
    results = future.result(timeout=SUITE_TIMEOUT_S).results
    failed = {r.test_id: r for r in results if not r.passed}
    unexpected = {test_id: r for test_id, r in failed.items() if test_id not in KNOWN_UNPASSABLE}
    details = "\n".join(
        f"{test_id} {r.name}: " + "; ".join(f.message for f in r.failures[:5]) for test_id, r in unexpected.items()
    )
    assert results, f"{level}: no results"
    assert not unexpected, f"{level} on a cluster: {len(unexpected)} failing\n{details}\n--- server log ---\n{server.log_tail()}"
