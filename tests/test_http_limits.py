"""The HTTP endpoint under hostile load, and its listeners: real servers, raw sockets, 127.0.0.1.

* probes answer a burst of 1,000 concurrent /health, and a burst of API reads beyond the redis-py
  pool waits for a connection instead of failing with 503;
* a client that sends half a request head, or half a body, gets a 408 and is disconnected after
  the configured timeout, while the probes keep answering;
* beyond ``OJS_HTTP_MAX_CONCURRENCY`` a request gets a retryable 503 with the OJS error body,
  the probes do not;
* /health without Redis does not name the Redis address;
* ``ojs-server`` and ``ojs-run`` on a taken port exit non-zero at once, with a clear message;
* ``--metrics-port`` beyond loopback needs OJS_API_KEY or OJS_ALLOW_INSECURE_NO_AUTH, and
  ``--metrics-host`` chooses its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.fixtures.broker_process import ROOT, START_TIMEOUT_S, BrokerProcess, free_port, serving
from tests.fixtures.procs import Runtime, wait_until

HOST = "127.0.0.1"
PROBE_TIMEOUT_S = 5.0  # what a liveness probe would allow (the Kubernetes manifest's timeoutSeconds)
HANDLERS = "tests.fixtures.metrics_handlers"


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[BrokerProcess]:
    # A small redis-py pool: the bursts below are far beyond it.
    env = {"OJS_REDIS_MAX_CONNECTIONS": "8", "OJS_HTTP_HEADER_TIMEOUT_MS": "2000", "OJS_HTTP_BODY_TIMEOUT_MS": "2000"}
    with serving(redis_url, tmp_path, env=env) as server:
        yield server


async def _request(port: int, raw: bytes, *, timeout_s: float) -> tuple[int, bytes]:
    """One request on its own connection (Connection: close): its status and body, 0 on failure."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(raw)
                reply = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


async def _burst(port: int, raw: bytes, count: int) -> list[int]:
    replies = await asyncio.gather(*(_request(port, raw, timeout_s=20) for _ in range(count)))
    return [status for status, _ in replies]


def _statuses(statuses: list[int]) -> dict[int, int]:
    return {status: statuses.count(status) for status in sorted(set(statuses))}


def test_a_thousand_concurrent_health_probes_all_answer(server: BrokerProcess) -> None:
    # When 1,000 clients ask /health at once (far more than the Redis pool's connections)
    statuses = asyncio.run(_burst(server.port, _get("/health"), 1000))
    # Then every one is answered 200: a probe costs no pool connection
    assert _statuses(statuses) == {200: 1000}


def test_a_burst_beyond_the_redis_pool_waits_for_a_connection(server: BrokerProcess) -> None:
    # Given a job
    job = httpx.post(f"{server.url}/ojs/v1/jobs", json={"type": "t", "args": []}).json()["job"]
    # When 1,000 clients read it at once, with 8 Redis connections in the pool
    statuses = asyncio.run(_burst(server.port, _get(f"/ojs/v1/jobs/{job['id']}"), 1000))
    # Then they queue for a connection: every read succeeds, none is a 503
    assert _statuses(statuses) == {200: 1000}


async def _slow_clients(port: int, partial: bytes, count: int, *, deadline_s: float) -> list[tuple[bytes, bool]]:
    """`count` connections that send `partial` and then nothing. For each: what the server sent
    before closing it, and whether it closed it within `deadline_s`."""
    connections = [await asyncio.open_connection(HOST, port) for _ in range(count)]
    for _, writer in connections:
        writer.write(partial)
    await asyncio.gather(*(writer.drain() for _, writer in connections))

    async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
        try:
            async with asyncio.timeout(deadline_s):
                return await reader.read(), True
        except TimeoutError:
            return b"", False

    # While they hang, the probes answer
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        for path in ("/health", "/ready"):
            assert (await client.get(f"http://{HOST}:{port}{path}")).status_code == 200
    try:
        return await asyncio.gather(*(until_closed(reader) for reader, _ in connections))
    finally:
        for _, writer in connections:
            writer.close()


def _error_code(reply: bytes) -> str:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    return str(json.loads(body)["error"]["code"])


def test_slow_request_heads_are_cut_off_and_the_probes_still_answer(server: BrokerProcess) -> None:
    # When 300 clients send half a request head and wait (the server's head timeout is 2 s)
    outcomes = asyncio.run(_slow_clients(
        server.port, f"GET /ojs/v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode(), 300, deadline_s=15,
    ))
    # Then each got a 408 with the OJS error body and was disconnected by the server
    assert sum(closed for _, closed in outcomes) == 300
    assert {_error_code(reply) for reply, _ in outcomes} == {"request_timeout"}


def test_slow_request_bodies_get_408_and_are_disconnected(server: BrokerProcess) -> None:
    # When 20 clients send a whole head announcing 100 bytes of body, then 10 bytes of it
    head = (f"POST /ojs/v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    outcomes = asyncio.run(_slow_clients(server.port, head + b'{"type": "', 20, deadline_s=15))
    # Then each got a 408 once the body timeout passed, and its connection was closed
    assert sum(closed for _, closed in outcomes) == 20
    assert {_error_code(reply) for reply, _ in outcomes} == {"request_timeout"}


def test_an_unread_body_trickled_after_the_answer_is_cut_off(server: BrokerProcess) -> None:
    async def trickle() -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            # Given a request to no endpoint, answered 404 before its announced body is read
            writer.write(f"POST /nowhere HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 404 "), head
            # When the client keeps sending that body a byte at a time
            async with asyncio.timeout(15):
                while not reader.at_eof():
                    writer.write(b"x")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await reader.read(4096)
            return head, True
        except (TimeoutError, OSError) as err:
            return repr(err).encode(), isinstance(err, ConnectionError)
        finally:
            writer.close()

    # Then the server closes the connection after the head timeout
    reply, closed = asyncio.run(trickle())
    assert closed, reply


def test_beyond_the_concurrency_bound_a_request_gets_a_retryable_503_but_probes_answer(
    redis_url: str, tmp_path: Path,
) -> None:
    # Given a server bounded to 10 connections, with a long body timeout
    env = {"OJS_HTTP_MAX_CONCURRENCY": "10", "OJS_HTTP_BODY_TIMEOUT_MS": "20000"}
    with serving(redis_url, tmp_path, env=env) as server:
        asyncio.run(_beyond_the_bound(server.port))


async def _beyond_the_bound(port: int) -> None:
    # When 10 requests are in progress (heads sent, bodies pending)
    head = (f"POST /ojs/v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Content-Length: 50\r\n\r\n").encode()
    held = [await asyncio.open_connection(HOST, port) for _ in range(10)]
    try:
        for _, writer in held:
            writer.write(head)
        await asyncio.gather(*(writer.drain() for _, writer in held))
        # Then one more request gets a retryable 503 with the OJS error body
        body = b'{"type": "t", "args": []}'
        enqueue = (f"POST /ojs/v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        status, reply = await _request(port, enqueue, timeout_s=PROBE_TIMEOUT_S)
        assert status == 503, reply
        error = json.loads(reply)["error"]
        assert (error["code"], error["retryable"]) == ("backend_unavailable", True), error
        # And the probes are still answered
        for path in ("/health", "/ready", "/ojs/v1/health"):
            assert (await _request(port, _get(path), timeout_s=PROBE_TIMEOUT_S))[0] == 200, path
    finally:
        for _, writer in held:
            writer.close()


def test_health_without_redis_does_not_name_the_redis_address(tmp_path: Path) -> None:
    # Given a server whose Redis refuses connections
    redis_port = free_port()
    server = BrokerProcess(f"redis://127.0.0.1:{redis_port}/0", tmp_path)
    try:
        def answer(path: str) -> httpx.Response | None:
            try:
                return httpx.get(f"{server.url}{path}", timeout=PROBE_TIMEOUT_S)
            except httpx.TransportError:
                assert server.proc.poll() is None, server.log_tail()
                return None

        health = wait_until(lambda: answer("/health"), timeout_s=START_TIMEOUT_S, what="an answer")
        # Then /health is unhealthy, says the job store is unavailable, and names no address
        assert health.status_code == 503
        assert health.json()["backend"]["error"] == "job store unavailable"
        reply = answer("/ojs/v1/jobs/01a23171-2877-716e-b007-66264b8c1ed0")
        assert reply is not None and reply.status_code == 503
        for response in (health, reply):
            assert str(redis_port) not in response.text and "127.0.0.1" not in response.text, response.text
    finally:
        print(server.log_tail())
        server.stop()


def test_ojs_server_on_a_taken_port_exits_at_once_with_a_clear_message(
    server: BrokerProcess, redis_url: str,
) -> None:
    # When a second server is started on the first one's port
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OJS_") and k != "REDIS_URL"}
    second = subprocess.Popen(
        [sys.executable, "-m", "runtime", "--port", str(server.port), "--redis", redis_url],
        cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # Then it exits non-zero at once, saying which address is taken
        code = second.wait(timeout=START_TIMEOUT_S)
        output = second.stdout.read().decode() if second.stdout else ""
        assert code != 0, output
        assert f"{HOST}:{server.port}" in output and "address already in use" in output, output
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    # And the first one still serves
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_ojs_run_on_a_taken_port_exits_at_once_with_a_clear_message(
    server: BrokerProcess, redis_url: str, tmp_path: Path,
) -> None:
    runtime = Runtime(redis_url, HANDLERS, "--processes", "1", "--http", f"{HOST}:{server.port}",
                      log_path=tmp_path / "ojs-run.log")
    try:
        assert runtime.wait_exit(START_TIMEOUT_S) != 0, runtime.log()
        assert f"{HOST}:{server.port}" in runtime.log() and "address already in use" in runtime.log(), runtime.log()
    finally:
        runtime.stop()


def test_metrics_port_beyond_loopback_needs_a_key_or_the_insecure_flag(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given OJS_HOST on every interface, no API key and no OJS_ALLOW_INSECURE_NO_AUTH
    for name in ("OJS_API_KEY", "OJS_ALLOW_INSECURE_NO_AUTH", "OJS_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OJS_HOST", "0.0.0.0")
    # When ojs-run serves only the metrics port
    runtime = Runtime(redis_url, HANDLERS, "--processes", "1", "--no-http", "--metrics-port", str(free_port()),
                      log_path=tmp_path / "ojs-run.log")
    try:
        # Then it refuses to start, naming the fix
        try:
            code = runtime.wait_exit(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ojs-run serves /metrics on 0.0.0.0 without a key:\n{runtime.log()}")
        assert code != 0
        assert "Refusing" in runtime.log() and "OJS_ALLOW_INSECURE_NO_AUTH" in runtime.log(), runtime.log()
    finally:
        runtime.stop()


def test_metrics_host_puts_the_metrics_port_on_loopback(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given OJS_HOST on every interface and no API key
    for name in ("OJS_API_KEY", "OJS_ALLOW_INSECURE_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OJS_HOST", "0.0.0.0")
    port = free_port()
    # When the metrics port is put on loopback explicitly
    runtime = Runtime(redis_url, HANDLERS, "--processes", "1", "--no-http", "--metrics-port", str(port),
                      "--metrics-host", HOST, log_path=tmp_path / "ojs-run.log")
    try:
        # Then it serves /metrics there, and listens on loopback only
        def metrics() -> bool:
            assert runtime.proc.poll() is None, runtime.log()
            try:
                return httpx.get(f"http://{HOST}:{port}/metrics", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(metrics, timeout_s=START_TIMEOUT_S, what="/metrics")
        processes = [psutil.Process(runtime.proc.pid), *psutil.Process(runtime.proc.pid).children()]
        listening = {(c.laddr.ip, c.laddr.port) for p in processes for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {(HOST, port)}
    finally:
        runtime.stop()
