"""A managed-style Redis Cluster: every node on TLS only (client certificates required, the
cluster bus on TLS too) and a password, reached with a ``rediss+cluster://`` URL and the
``OJS_REDIS_TLS_*`` settings. `ojs-run` drains jobs a Client enqueued, and `ojs-server` answers
the conformance level 0, both through TLS on every path (the lean connection, redis-py, the
supervisor's checks)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import Client
from runtime.config import settings_from_env
from tests.conformance.runner import run_suites
from tests.conftest import skip_or_fail
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import Runtime, free_port
from tests.fixtures.redis_cluster import LocalCluster
from tests.fixtures.tls_redis import make_certificates, tls_server_binary
from tests.test_conformance_levels import suites_root

pytestmark = pytest.mark.slow

PASSWORD = "cluster-secret"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[LocalCluster]:
    if tls_server_binary() is None:
        skip_or_fail("no redis-server with TLS on PATH (Debian's redis-server)")
    certs = Path(tempfile.mkdtemp(prefix="ojs-cluster-tls-"))
    make_certificates(certs)
    with LocalCluster(tls=certs, password=PASSWORD) as cluster:
        yield cluster


def test_a_tls_cluster_refuses_a_plain_connection(tls_cluster: LocalCluster) -> None:
    import redis

    plain = redis.Redis(port=tls_cluster.nodes[0].port, password=PASSWORD, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_jobs_run_on_a_tls_cluster(tls_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls_cluster.seed_url.startswith(f"rediss+cluster://:{PASSWORD}@")
    for name, value in tls_cluster.tls_env.items():
        monkeypatch.setenv(name, value)
    runtime = Runtime(tls_cluster.seed_url, "handlers_example", "--processes", "1", "--http",
                      f"127.0.0.1:{free_port()}", log_path=tmp_path / "ojs-run.log")
    try:
        runtime.wait_ready(1)

        async def go() -> list[object]:
            settings = settings_from_env(redis_url=tls_cluster.seed_url)
            async with Client(tls_cluster.seed_url, settings=settings) as client:
                handles = [await client.enqueue_job("email.send", [f"user{i}@example.com", "Hi"]) for i in range(20)]
                return [await handle.result(timeout=30) for handle in handles]

        results = asyncio.run(go())
        assert [r["to"] for r in results] == [f"user{i}@example.com" for i in range(20)]  # type: ignore[index]
    finally:
        runtime.stop()
    assert "Traceback" not in runtime.log(), runtime.log()[-3000:]


def test_conformance_level_0_on_a_tls_cluster(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    if not suites_root().is_dir():
        skip_or_fail(f"conformance suites not found at {suites_root()}")
    import redis.cluster

    from tests.fixtures.cluster_keys import clear_namespace

    node = tls_cluster.nodes[0]
    store = redis.cluster.RedisCluster(host="127.0.0.1", port=node.port, password=PASSWORD, ssl=True,
                                       ssl_ca_certs=tls_cluster.tls_env["OJS_REDIS_TLS_CA"],
                                       ssl_certfile=tls_cluster.tls_env["OJS_REDIS_TLS_CERT"],
                                       ssl_keyfile=tls_cluster.tls_env["OJS_REDIS_TLS_KEY"])
    server = BrokerProcess(tls_cluster.seed_url, tmp_path, env={**tls_cluster.tls_env, "OJS_KEY_PREFIX": "{ojs-tls}:"})
    try:
        server.wait_ready()
        report = run_suites(server.url, suites_root() / "level-0-core", reset=lambda: clear_namespace(store, "{ojs-tls}:"))
        failed = [f"{r.test_id}: {[f.message for f in r.failures[:2]]}" for r in report.results if not r.passed]
        assert report.results and not failed, f"{failed}\n{server.log_tail()}"
    finally:
        server.stop()
        store.close()
