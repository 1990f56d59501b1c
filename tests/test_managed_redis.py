"""Every connection path over TLS, as an ACL user restricted to the namespace and to the commands
the README lists (runtime.broker.acl), against a real `redis-server` that accepts TLS only and
requires a client certificate (tests/fixtures/tls_redis.py).

After every test the server's ACL log must be empty: a command the list lacks, or a key outside
the namespace, fails the test even where the runtime only logs the refusal (a background loop)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from redis.exceptions import NoPermissionError

from runtime import timefmt
from runtime.broker import wire
from runtime.broker.clients import redis_client
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.records import job_from_body
from runtime.client import Client, Draft
from runtime.config import Settings
from runtime.envelope import CronRequest, ErrorInfo
from tests.conformance.runner import run_suites
from tests.conftest import POOL_HANDLERS, skip_or_fail
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import Runtime, free_port, wait_until
from tests.fixtures.tls_redis import TlsRedis, make_certificates, tls_server_binary
from tests.test_conformance_levels import KNOWN_UNPASSABLE, suites_root

PREFIX = "{ojs}:"  # the runtime's default namespace: what the ACL user may touch
ACL_SUITES = ("level-0-core", "ext-admin-api", "ext-dead-letter")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = tls_server_binary()
    if binary is None or shutil.which("openssl") is None:
        skip_or_fail("the TLS tests need redis-server (Debian's, built with TLS) and openssl on PATH")
    server = TlsRedis(binary, tmp_path_factory.mktemp("tls-redis"), key_prefix=PREFIX)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _nothing_refused(tls_redis: TlsRedis) -> Iterator[None]:
    admin = tls_redis.admin()
    admin.flushall()
    admin.acl_log_reset()
    yield
    try:
        assert tls_redis.denials() == [], "the ACL refused commands or keys the runtime needs"
    finally:
        admin.close()


def settings_for(tls_redis: TlsRedis) -> Settings:
    """The runtime's settings as an operator gives them: the user's URL, the TLS files apart."""
    files = tls_redis.tls_files
    return Settings(redis_url=tls_redis.user_url, redis_tls_ca=files["ssl_ca_certs"],
                    redis_tls_cert=files["ssl_certfile"], redis_tls_key=files["ssl_keyfile"])


def new_job(job_type: str, **options: Any) -> Any:
    return job_from_body(msgspec.json.encode({"type": job_type, "args": [], "options": options}),
                         now_ms=timefmt.now_ms())


# --- the lean connection ---------------------------------------------------------------------------

def test_lean_connection_speaks_tls_and_authenticates_the_acl_user(tls_redis: TlsRedis) -> None:
    async def go() -> None:
        conn = wire.Wire.from_url(tls_redis.user_url, **tls_redis.tls_files)
        try:
            assert conn.address.tls is not None
            assert await conn.execute("SET", f"{PREFIX}probe", "1") == b"OK"
            assert await conn.execute("GET", f"{PREFIX}probe") == b"1"
        finally:
            await conn.close()

    asyncio.run(go())


def test_lean_connection_takes_its_tls_files_from_the_url_query(tls_redis: TlsRedis) -> None:
    async def go() -> None:
        conn = wire.Wire.from_url(tls_redis.url("ojs", "ojs-secret", with_files=True))
        try:
            assert await conn.execute("PING") == b"PONG"
        finally:
            await conn.close()

    asyncio.run(go())


def test_the_acl_user_is_restricted_to_the_namespace(tls_redis: TlsRedis) -> None:
    """The premise of the other tests: a key outside the namespace, or a command off the list,
    is refused (so an empty ACL log after them means the runtime needed nothing else)."""
    async def go() -> None:
        conn = wire.Wire.from_url(tls_redis.user_url, **tls_redis.tls_files)
        try:
            with pytest.raises(NoPermissionError):
                await conn.execute("SET", "elsewhere", "1")
            with pytest.raises(NoPermissionError):
                await conn.execute("FLUSHDB")
        finally:
            await conn.close()

    asyncio.run(go())
    assert len(tls_redis.denials()) == 2
    tls_redis.admin().acl_log_reset()


def test_lean_connection_refuses_a_server_it_cannot_verify(tls_redis: TlsRedis, tmp_path: Path) -> None:
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    make_certificates(other_ca)
    files = {**tls_redis.tls_files, "ssl_ca_certs": str(other_ca / "ca.pem")}

    async def go() -> None:
        conn = wire.Wire.from_url(tls_redis.user_url, **files)
        with pytest.raises(wire.CommandNotSent, match="certificate verify failed"):
            await conn.execute("PING")

    asyncio.run(go())


def test_scripts_go_over_the_lean_connection_with_the_clients_tls(tls_redis: TlsRedis) -> None:
    """The broker's transitions take the lean connection over TLS (not redis-py's fallback), with
    the TLS settings of the client they are built on."""
    async def go() -> None:
        settings = Settings(redis_url=tls_redis.url("ojs", "ojs-secret", with_files=True))
        client = redis_client(settings)
        broker = Broker(client, settings)
        try:
            assert broker.scripts.wire is not None and broker.scripts.wire.address.tls is not None
            done = await broker.enqueue([new_job("tls.job")], now_ms=timefmt.now_ms())
            assert len(done) == 1
        finally:
            await broker.close()
            await client.aclose()

    asyncio.run(go())


# --- the broker's transitions, in process --------------------------------------------------------

def test_broker_transitions_over_tls_as_the_acl_user(tls_redis: TlsRedis) -> None:
    settings = settings_for(tls_redis)

    async def go() -> None:
        client = redis_client(settings)
        broker = Broker(client, settings)
        producer = Client(settings.redis_url, settings=settings)
        try:
            first = await producer.enqueue("tls.job", [1])
            second = await producer.enqueue("tls.job", [2], retry={"max_attempts": 2, "jitter": False})
            workflow = await producer.chain([Draft(type="tls.step"), Draft(type="tls.step")])
            claimed = await broker.fetch(["default"], count=3, worker_id="tls-w")
            ids = {h[b"id"].decode(): h for h in claimed}
            assert first in ids and second in ids
            await broker.ack(first, b"{}", worker_id="tls-w")
            await broker.nack(second, ErrorInfo(code="boom", message="boom"), worker_id="tls-w")
            (step,) = [i for i in ids if i not in (first, second)]
            await broker.ack(step, b"{}", worker_id="tls-w")  # the chain's next step becomes available
            assert await broker.fetch(["default"], count=1, worker_id="tls-w")
            crons = Crons(broker)
            await crons.register(msgspec.convert({"name": "tls-cron", "cron": "* * * * *", "type": "tls.cron"},
                                                 CronRequest))
            next_ms = await client.zscore(broker.keys.cron_next, "tls-cron")
            assert await crons.tick(now_ms=int(next_ms)) == 1
            await broker.scheduler_step()
            assert (await broker.get(first))[b"state"] == b"completed"
            assert workflow["id"]
        finally:
            await producer.close()
            await broker.close()
            await client.aclose()

    asyncio.run(go())


# --- the processes -------------------------------------------------------------------------------

def test_ojs_server_passes_conformance_over_tls_as_the_acl_user(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """The HTTP process (its client pool, probes, scheduler loops) on a managed Redis, through the
    core level and the admin and dead-letter extensions (the admin API's reads and scans); the
    runner resets the store between its tests through the unrestricted user."""
    root = suites_root()
    if not root.is_dir():
        skip_or_fail(f"conformance suites not found at {root}")
    server = BrokerProcess(tls_redis.user_url, tmp_path, env=tls_redis.tls_env)
    try:
        server.wait_ready()
        results = [r for suite in ACL_SUITES
                   for r in run_suites(server.url, root / suite, redis_url=tls_redis.admin_url).results]
        failed = {r.test_id: [f.message for f in r.failures[:3]] for r in results
                  if not r.passed and r.test_id not in KNOWN_UNPASSABLE}
        assert results and not failed, f"{failed}\n{server.log_tail()}"
    finally:
        server.stop()


def test_ojs_run_completes_jobs_over_tls_as_the_acl_user(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """The supervisor's reach check, recovery, pools (lean connection, subscription), the HTTP
    process and /metrics, and the Client waiting on results: all over TLS as the user."""
    port = free_port()
    runtime = Runtime(tls_redis.user_url, POOL_HANDLERS, "--processes", "1", "--http", f"127.0.0.1:{port}",
                      log_path=tmp_path / "ojs-run.log",
                      extra_env={**tls_redis.tls_env, "POOL_TEST_REDIS_URL": tls_redis.admin_url})
    try:
        runtime.wait_ready(1)

        async def produce() -> list[Any]:
            async with Client(tls_redis.url("ojs", "ojs-secret", with_files=True)) as client:
                handles = [await client.enqueue_job("count.job") for _ in range(5)]
                return [await h.result(timeout=20) for h in handles]

        assert asyncio.run(produce()) == [{"attempt": 1}] * 5
        admin = tls_redis.admin()
        try:
            assert len(admin.hgetall("pooltest:done")) == 5
        finally:
            admin.close()
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/ready", timeout=5).status_code == 200, what="/ready")
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200
    finally:
        runtime.stop()
        print(runtime.log())


def test_an_unreachable_tls_redis_stops_ojs_run_with_a_clear_message(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """Without the client certificate the server refuses the connection: the supervisor's reach
    check says so instead of starting pools that cannot work."""
    env = {k: v for k, v in tls_redis.tls_env.items() if k == "OJS_REDIS_TLS_CA"}
    runtime = Runtime(tls_redis.user_url, POOL_HANDLERS, "--processes", "1", "--no-http",
                      log_path=tmp_path / "ojs-run.log", extra_env=env)
    try:
        assert runtime.wait_exit(timeout_s=60) != 0
        assert "cannot reach Redis" in runtime.log()
    finally:
        runtime.stop()
