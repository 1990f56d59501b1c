"""Sentinel on TLS: a primary, a replica and three Sentinels, each on a TLS port only (client
certificates required; replication and the Sentinels' own links on TLS too), reached with a
``rediss+sentinel://`` URL and the ``OJS_REDIS_TLS_*`` settings. `ojs-run` drains jobs a Client
enqueued, through TLS on every path (the Sentinel exchange, the lean connection, redis-py, the
supervisor's checks); then the primary is killed, and jobs enqueued after the promotion run too,
found through the same Sentinels."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runtime import Client
from runtime.config import settings_from_env
from tests.conftest import skip_or_fail
from tests.fixtures.procs import Runtime, free_port
from tests.fixtures.sentinel_cluster import SentinelCluster, wait_replica_online
from tests.fixtures.tls_redis import client_tls_env, make_certificates, tls_server_binary

pytestmark = pytest.mark.slow

EMAILS = 10


@pytest.fixture
def tls_sentinels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelCluster]:
    if tls_server_binary() is None:
        skip_or_fail("no redis-server with TLS on PATH (Debian's redis-server)")
    certs, folder = tmp_path / "tls", tmp_path / "cluster"
    certs.mkdir()
    folder.mkdir()
    make_certificates(certs)
    for name, value in client_tls_env(certs).items():
        monkeypatch.setenv(name, value)
    cluster = SentinelCluster(folder, tls=certs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        print(cluster.logs())


def send_emails(url: str, first: int) -> list[str]:
    async def go() -> list[str]:
        async with Client(url, settings=settings_from_env(redis_url=url)) as client:
            handles = [await client.enqueue_job("email.send", [f"user{i}@example.com", "Hi"])
                       for i in range(first, first + EMAILS)]
            return [(await handle.result(timeout=30))["to"] for handle in handles]

    return asyncio.run(go())


def test_the_nodes_and_sentinels_take_tls_only(tls_sentinels: SentinelCluster) -> None:
    for node in (tls_sentinels.nodes[0], tls_sentinels.sentinels[0]):
        plain = redis.Redis(port=node.port, socket_timeout=2, socket_connect_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plain.ping()
    assert tls_sentinels.url.startswith("rediss+sentinel://")


def test_jobs_run_through_tls_sentinels_before_and_after_a_failover(
    tls_sentinels: SentinelCluster, tmp_path: Path,
) -> None:
    url = tls_sentinels.url
    runtime = Runtime(url, "handlers_example", "--processes", "1", "--http", f"127.0.0.1:{free_port()}",
                      log_path=tmp_path / "ojs-run.log")
    try:
        runtime.wait_ready(1)
        assert send_emails(url, 0) == [f"user{i}@example.com" for i in range(EMAILS)]
        # When: the primary dies; the Sentinels promote its replica
        old = tls_sentinels.primary()
        wait_replica_online(old)
        old.kill()
        tls_sentinels.wait_promoted(old.port)
        # Then: the runtime and a new Client find the new primary through the TLS Sentinels
        assert send_emails(url, EMAILS) == [f"user{i}@example.com" for i in range(EMAILS, 2 * EMAILS)]
    finally:
        runtime.stop()
    assert "Traceback" not in runtime.log(), runtime.log()[-3000:]
