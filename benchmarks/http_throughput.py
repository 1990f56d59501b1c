"""HTTP throughput of the OJS broker: enqueue, batch enqueue, fetch+ack, and Redis commands per job.

Run ``python -m benchmarks.http_throughput --help``. Without ``--url`` the benchmark starts its own
private Redis (no persistence) and its own broker (``python -m runtime``) and stops both at the end;
with ``--url`` it measures a server that is already running (and counts Redis commands only when
``--redis`` names that server's Redis).

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per
concurrent client, one request in flight per connection): it costs a fraction of what the server
spends per request, so the figures describe the server. ``--client httpx`` uses httpx instead, to
compare. Every figure comes with the CPU that the server, Redis and this client used while it was
measured, so a saturated client shows up in the table instead of hiding behind a low number.

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import platform
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec

REPO_ROOT = Path(__file__).resolve().parent.parent
API = "/ojs/v1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
IDLE_SAMPLE_S = 1.0
PROGRESS_INTERVAL_S = 0.5
# Commands the benchmark itself sends to Redis while counting; never part of a job's cost.
OTHER_LOAD_WARNING = 0.15  # share of one core used by unrelated processes that makes a figure suspect
OWN_COMMANDS = ("info", "config", "client", "hello", "select")


# --------------------------------------------------------------------------------------------
# HTTP clients: (status, body) for one request on one keep-alive connection.


class Connection(Protocol):
    async def connect(self) -> None: ...
    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]: ...
    async def close(self) -> None: ...


class RawConnection:
    """A minimal HTTP/1.1 client on asyncio streams: one request at a time, keep-alive.

    Request heads are cached per (method, path), so a request costs one bytes concatenation, one
    write and two reads. Handles Content-Length and chunked bodies and reconnects after a
    ``Connection: close``. Plain http only.
    """

    def __init__(self, host: str, port: int, base_path: str, extra_headers: dict[str, str]) -> None:
        self.host, self.port, self.base_path = host, port, base_path.rstrip("/")
        fixed = f"Host: {host}:{port}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        fixed += "".join(f"{name}: {value}\r\n" for name, value in extra_headers.items())
        self._fixed = fixed
        self._heads: dict[tuple[str, str], bytes] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _head(self, method: str, path: str) -> bytes:
        head = self._heads.get((method, path))
        if head is None:
            head = f"{method} {self.base_path}{path} HTTP/1.1\r\n{self._fixed}Content-Length: ".encode()
            self._heads[(method, path)] = head
        return head

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(self._head(method, path) + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            size = int(head[at + 17 : end])
            payload = await self._reader.readexactly(size) if size else b""
        elif b"\r\ntransfer-encoding: chunked" in lower:
            payload = await self._read_chunked()
        else:
            payload = await self._reader.read()
            lower += b"\r\nconnection: close"
        if b"\r\nconnection: close" in lower:
            await self.close()
        return status, payload

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, up to the empty line
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


class HttpxConnection:
    """The same interface on httpx.AsyncClient (one HTTP/1.1 keep-alive connection per client)."""

    def __init__(self, base_url: str, extra_headers: dict[str, str]) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"content-type": "application/json", **extra_headers},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=60.0,
        )

    async def connect(self) -> None:
        await self._client.get(f"{API}/health")

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self._client.request(method, path, content=body)
        return response.status_code, response.content

    async def close(self) -> None:
        await self._client.aclose()


def connection_factory(url: str, kind: str, api_key: str | None) -> Callable[[], Connection]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    parts = urlsplit(url)
    if kind == "httpx":
        return lambda: HttpxConnection(url, headers)
    if parts.scheme != "http":
        raise SystemExit(f"the raw client speaks plain http only; use --client httpx for {url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return lambda: RawConnection(host, port, parts.path, headers)


# --------------------------------------------------------------------------------------------
# Figures


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile of an ascending list (q in 0..1)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(samples_s: list[float]) -> dict[str, float | int | None]:
    ordered = sorted(samples_s)
    ms = 1000.0
    return {
        "count": len(ordered),
        "p50_ms": _scale(percentile(ordered, 0.50), ms),
        "p90_ms": _scale(percentile(ordered, 0.90), ms),
        "p99_ms": _scale(percentile(ordered, 0.99), ms),
        "max_ms": _scale(ordered[-1] if ordered else None, ms),
        "mean_ms": _scale(sum(ordered) / len(ordered) if ordered else None, ms),
    }


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else round(value * factor, 3)


@dataclass
class Op:
    """One kind of request in a workload (enqueue, batch, fetch, ack)."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def record(self, started: float, status: int, body: bytes) -> bool:
        self.latencies.append(time.perf_counter() - started)
        if 200 <= status < 300:
            return True
        self.errors += 1
        if not self.first_error:
            self.first_error = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
        return False


@dataclass
class WorkloadResult:
    key: str
    title: str
    jobs: int
    requests: int
    elapsed_s: float
    ops: list[Op]
    cpu: dict[str, float | None]
    commands: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(op.errors for op in self.ops)

    def server_us_per_job(self) -> float | None:
        """Server CPU time per job: unlike jobs/s, it hardly moves when other load shares the cores."""
        share = self.cpu.get("server")
        if share is None or not self.jobs:
            return None
        return round(share * self.elapsed_s / self.jobs * 1e6, 1)

    def as_dict(self) -> dict[str, Any]:
        all_latencies = [x for op in self.ops for x in op.latencies]
        return {
            "workload": self.key,
            "title": self.title,
            "jobs": self.jobs,
            "requests": self.requests,
            "elapsed_s": round(self.elapsed_s, 4),
            "jobs_per_s": round(self.jobs / self.elapsed_s, 1) if self.elapsed_s else None,
            "requests_per_s": round(self.requests / self.elapsed_s, 1) if self.elapsed_s else None,
            "latency": latency_summary(all_latencies),
            "latency_by_request": {op.name: latency_summary(op.latencies) for op in self.ops},
            "errors": self.errors,
            "first_errors": {op.name: op.first_error for op in self.ops if op.first_error},
            "cpu_fraction_of_one_core": self.cpu,
            "server_cpu_us_per_job": self.server_us_per_job(),
            "redis_commands": self.commands,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------
# CPU and Redis counters


class CpuMeter:
    """CPU seconds of this process, the server process (when known) and Redis (INFO cpu)."""

    def __init__(self, server_pid: int | None, redis: RedisStats | None) -> None:
        self.redis = redis
        self._server: Any = None
        if server_pid is not None:
            try:
                import psutil

                self._server = psutil.Process(server_pid)
            except Exception:  # psutil missing or the pid is gone: report n/a
                self._server = None

    def sample(self) -> tuple[float, float, float | None, float | None, float | None]:
        server = None
        if self._server is not None:
            try:  # with --processes N: the parent and its N server processes together
                server = 0.0
                for proc in (self._server, *self._server.children(recursive=True)):
                    times = proc.cpu_times()
                    server += times.user + times.system
            except Exception:
                server = None
        redis = self.redis.cpu_seconds() if self.redis is not None else None
        return time.perf_counter(), time.process_time(), server, redis, _machine_busy_seconds()

    @staticmethod
    def fractions(before: tuple[float, float, float | None, float | None, float | None],
                  after: tuple[float, float, float | None, float | None, float | None]) -> dict[str, float | None]:
        """CPU seconds per wall second (1.0 = one core busy) of each party, and of everything else
        on the machine: other test runs or builds sharing the cores skew the figures."""
        wall = after[0] - before[0]

        def frac(i: int) -> float | None:
            a, b = before[i], after[i]
            return round((b - a) / wall, 3) if a is not None and b is not None and wall > 0 else None

        out = {"server": frac(2), "redis": frac(3), "client": frac(1), "machine": frac(4)}
        parts = (out["server"], out["redis"], out["client"], out["machine"])
        out["other"] = None if None in parts else round(max(0.0, parts[3] - parts[0] - parts[1] - parts[2]), 3)  # type: ignore[operator]
        return out


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes used (user + nice + system, summed over CPUs; /proc/stat)."""
    try:
        import psutil

        times = psutil.cpu_times()
    except Exception:
        return None
    return float(times.user + getattr(times, "nice", 0.0) + times.system)


class RedisStats:
    """INFO commandstats / INFO cpu / CONFIG RESETSTAT on the broker's Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._redis.ping()
        self.idle_rate: dict[str, float] = {}

    def version(self) -> str:
        info = self._redis.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"

    def reset(self) -> float:
        self._redis.config_resetstat()
        return time.perf_counter()

    def calls(self) -> dict[str, int]:
        stats = self._redis.info("commandstats")
        out: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_").lower()
            if name.split("|")[0] in OWN_COMMANDS:
                continue
            out[name] = int(value["calls"])
        return out

    def cpu_seconds(self) -> float:
        info = self._redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def sample_idle(self, seconds: float) -> None:
        """Commands the broker's own loops (scheduler, cron) send per second while idle."""
        start = self.reset()
        time.sleep(seconds)
        calls = self.calls()
        elapsed = time.perf_counter() - start
        self.idle_rate = {name: count / elapsed for name, count in calls.items()}

    def per_job(self, start: float, jobs: int) -> dict[str, Any]:
        """Commands since `start` (a reset), per job, gross and net of the idle background."""
        calls = self.calls()
        elapsed = time.perf_counter() - start
        background = {name: rate * elapsed for name, rate in self.idle_rate.items()}
        net = {name: max(0.0, count - background.get(name, 0.0)) for name, count in calls.items()}
        per_job = {name: round(count / jobs, 4) for name, count in sorted(net.items(), key=lambda kv: -kv[1])}
        return {
            "jobs": jobs,
            "window_s": round(elapsed, 3),
            "evalsha_per_job": round(net.get("evalsha", 0.0) / jobs, 4),
            "commands_per_job": round(sum(net.values()) / jobs, 4),
            "gross_evalsha_per_job": round(calls.get("evalsha", 0) / jobs, 4),
            "gross_commands_per_job": round(sum(calls.values()) / jobs, 4),
            "per_command_per_job": {k: v for k, v in per_job.items() if v > 0},
            "raw_calls": calls,
            "background_subtracted": {k: round(v, 1) for k, v in background.items() if v >= 0.05},
        }

    def close(self) -> None:
        self._redis.close()


# --------------------------------------------------------------------------------------------
# Running the load


class Progress:
    """A one-line progress display on stderr (only when stderr is a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._task: asyncio.Task[None] | None = None

    def start(self, label: str, total: int, done: Callable[[], int]) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(label, total, done))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    async def _run(self, label: str, total: int, done: Callable[[], int]) -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            count = done()
            rate = count / (time.perf_counter() - start)
            sys.stderr.write(f"\r\x1b[K  {label}: {count}/{total} jobs  {rate:,.0f} jobs/s")
            sys.stderr.flush()


class _JobRef(msgspec.Struct):
    id: str


class _Fetched(msgspec.Struct):
    jobs: list[_JobRef] = []


_fetch_decoder = msgspec.json.Decoder(_Fetched)


def job_body(queue: str, index: int = 0) -> bytes:
    return msgspec.json.encode({
        "type": "bench.noop",
        "args": ["benchmark", index],
        "options": {"queue": queue},
    })


def batch_body(queue: str, count: int) -> bytes:
    job = job_body(queue)
    return b'{"jobs":[' + b",".join([job] * count) + b"]}"


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, server_pid: int | None,
                 redis: RedisStats | None) -> None:
        self.args = args
        self.url = url
        self.redis = redis
        self.cpu = CpuMeter(server_pid, redis)
        self.progress = Progress(sys.stderr.isatty() and not args.quiet)
        self.new_connection = connection_factory(url, args.client, args.api_key)
        self.run_id = secrets.token_hex(4)
        self.deadline = 0.0
        self.log: Callable[[str], None] = (lambda msg: None) if args.quiet else (
            lambda msg: print(msg, file=sys.stderr, flush=True))

    def queue(self, name: str) -> str:
        return f"bench-{name}-{self.run_id}" if name else f"bench-{self.run_id}"

    async def connections(self, count: int) -> list[Connection]:
        conns = [self.new_connection() for _ in range(count)]
        await asyncio.gather(*(c.connect() for c in conns))
        return conns

    async def _gather(self, coros: list[Awaitable[None]]) -> None:
        """Run the clients with the workload's time limit: loops are bounded in count and time."""
        deadline = self.deadline or time.perf_counter() + self.args.timeout
        remaining = max(1.0, deadline - time.perf_counter())
        try:
            await asyncio.wait_for(asyncio.gather(*coros), timeout=remaining)
        except TimeoutError:
            raise SystemExit(f"benchmark stopped: the time limit of {self.args.timeout:.0f} s ran out") from None

    # -- workloads ---------------------------------------------------------------------------

    async def warmup(self) -> None:
        """Load the scripts, open the code paths and the Redis connection pool; not measured."""
        queue = self.queue("warmup")
        conns = await self.connections(self.args.concurrency)
        body = job_body(queue)

        async def client(conn: Connection, n: int) -> None:
            for _ in range(n):
                await conn.call("POST", f"{API}/jobs", body)
            await conn.call("POST", f"{API}/jobs/batch", batch_body(queue, 10))
            while True:
                _, raw = await conn.call("POST", f"{API}/workers/fetch",
                                         b'{"queues":["%s"],"count":5}' % queue.encode())
                ids = [job.id for job in _fetch_decoder.decode(raw).jobs]
                if not ids:
                    break
                for job_id in ids:
                    await conn.call("POST", f"{API}/workers/ack", b'{"job_id":"%s"}' % job_id.encode())

        per_client = max(1, self.args.warmup // max(1, len(conns)))
        await self._gather([client(c, per_client) for c in conns])
        await asyncio.gather(*(c.close() for c in conns))

    async def enqueue_single(self) -> WorkloadResult:
        n, c = self.args.jobs, self.args.concurrency
        body = job_body(self.queue("enqueue"))
        op = Op("enqueue")
        issued = 0
        conns = await self.connections(c)

        async def client(conn: Connection) -> None:
            nonlocal issued
            while issued < n:
                issued += 1
                started = time.perf_counter()
                status, reply = await conn.call("POST", f"{API}/jobs", body)
                op.record(started, status, reply)

        result = await self._measure("enqueue", "enqueue, 1 job/request", n, [op],
                                     [client(conn) for conn in conns], lambda: len(op.latencies))
        await asyncio.gather(*(conn.close() for conn in conns))
        result.requests = len(op.latencies)
        return result

    async def enqueue_batch(self) -> WorkloadResult:
        n, b = self.args.jobs, self.args.batch
        sizes = [b] * (n // b) + ([n % b] if n % b else [])
        bodies = {size: batch_body(self.queue("batch"), size) for size in set(sizes)}
        c = min(self.args.concurrency, len(sizes))
        op = Op("batch")
        next_index = 0
        jobs_done = 0
        conns = await self.connections(c)

        async def client(conn: Connection) -> None:
            nonlocal next_index, jobs_done
            while next_index < len(sizes):
                size = sizes[next_index]
                next_index += 1
                started = time.perf_counter()
                status, reply = await conn.call("POST", f"{API}/jobs/batch", bodies[size])
                if op.record(started, status, reply):
                    jobs_done += size

        result = await self._measure("batch", f"batch enqueue, {b} jobs/request", n, [op],
                                     [client(conn) for conn in conns], lambda: jobs_done)
        await asyncio.gather(*(conn.close() for conn in conns))
        result.jobs, result.requests = jobs_done, len(op.latencies)
        if c < self.args.concurrency:
            result.notes.append(f"{c} clients: one per batch request")
        return result

    async def prefill(self, queue: str, n: int) -> None:
        b = self.args.batch
        sizes = [b] * (n // b) + ([n % b] if n % b else [])
        conns = await self.connections(min(self.args.concurrency, len(sizes)))
        pending = list(sizes)
        failures: list[str] = []

        async def client(conn: Connection) -> None:
            while pending:
                size = pending.pop()
                status, reply = await conn.call("POST", f"{API}/jobs/batch", batch_body(queue, size))
                if status != 201:
                    failures.append(f"HTTP {status}: {reply[:300]!r}")

        await self._gather([client(conn) for conn in conns])
        await asyncio.gather(*(conn.close() for conn in conns))
        if failures:
            raise SystemExit(f"pre-enqueue for fetch+ack failed: {failures[0]}")

    async def fetch_ack(self) -> WorkloadResult:
        n, c, k = self.args.jobs, self.args.concurrency, self.args.fetch_count
        queue = self.queue("")
        self.deadline = time.perf_counter() + self.args.timeout
        started = time.perf_counter()
        await self.prefill(queue, n)
        self.log(f"  pre-enqueued {n} jobs in {time.perf_counter() - started:.2f} s; fetching")
        fetch_body = msgspec.json.encode({"queues": [queue], "count": k})
        fetch_op, ack_op = Op("fetch"), Op("ack")
        acked = 0
        useful_fetches = 0
        last_ack = 0.0
        conns = await self.connections(c)

        async def worker(conn: Connection) -> None:
            nonlocal acked, useful_fetches, last_ack
            while True:
                started = time.perf_counter()
                status, reply = await conn.call("POST", f"{API}/workers/fetch", fetch_body)
                if not fetch_op.record(started, status, reply):
                    return
                ids = [job.id for job in _fetch_decoder.decode(reply).jobs]
                if not ids:
                    fetch_op.latencies.pop()  # the empty fetch that ends a worker: not a job's cost
                    return
                useful_fetches += 1
                for job_id in ids:
                    started = time.perf_counter()
                    status, reply = await conn.call("POST", f"{API}/workers/ack",
                                                    b'{"job_id":"' + job_id.encode() + b'"}')
                    if ack_op.record(started, status, reply):
                        acked += 1
                        last_ack = time.perf_counter()

        result = await self._measure("fetch_ack", f"fetch+ack, fetch count {k}", n, [fetch_op, ack_op],
                                     [worker(conn) for conn in conns], lambda: acked, end=lambda: last_ack)
        await asyncio.gather(*(conn.close() for conn in conns))
        result.jobs, result.requests = acked, useful_fetches + acked
        await self._check_completed(queue, n, result)
        return result

    async def fetch_batch_ack(self) -> WorkloadResult:
        """fetch K, then one POST /workers/ack/batch for the K jobs."""
        n, c, k = self.args.jobs, self.args.concurrency, self.args.fetch_count
        queue = self.queue("batch-ack")
        self.deadline = time.perf_counter() + self.args.timeout
        started = time.perf_counter()
        await self.prefill(queue, n)
        self.log(f"  pre-enqueued {n} jobs in {time.perf_counter() - started:.2f} s; fetching")
        fetch_body = msgspec.json.encode({"queues": [queue], "count": k})
        fetch_op, ack_op = Op("fetch"), Op("ack batch")
        acked = 0
        requests = 0
        last_ack = 0.0
        conns = await self.connections(c)

        async def worker(conn: Connection) -> None:
            nonlocal acked, requests, last_ack
            while True:
                started = time.perf_counter()
                status, reply = await conn.call("POST", f"{API}/workers/fetch", fetch_body)
                if not fetch_op.record(started, status, reply):
                    return
                ids = [job.id for job in _fetch_decoder.decode(reply).jobs]
                if not ids:
                    fetch_op.latencies.pop()  # the empty fetch that ends a worker: not a job's cost
                    return
                started = time.perf_counter()
                body = msgspec.json.encode({"acks": [{"job_id": job_id} for job_id in ids]})
                status, reply = await conn.call("POST", f"{API}/workers/ack/batch", body)
                requests += 2
                if ack_op.record(started, status, reply):
                    acked += int(json.loads(reply)["succeeded"])
                    last_ack = time.perf_counter()

        result = await self._measure("fetch_batch_ack", f"fetch+batch ack, fetch count {k}", n, [fetch_op, ack_op],
                                     [worker(conn) for conn in conns], lambda: acked, end=lambda: last_ack)
        await asyncio.gather(*(conn.close() for conn in conns))
        result.jobs, result.requests = acked, requests
        await self._check_completed(queue, n, result)
        return result

    async def _check_completed(self, queue: str, n: int, result: WorkloadResult) -> None:
        conn = self.new_connection()
        status, reply = await conn.call("GET", f"{API}/queues/{queue}/stats")
        await conn.close()
        if status != 200:
            result.notes.append(f"could not read queue stats: HTTP {status}")
            return
        stats = json.loads(reply).get("stats", {})
        if stats.get("completed") != n:
            result.notes.append(f"queue stats: completed={stats.get('completed')} of {n}, depth={stats.get('depth')}")

    async def _measure(self, key: str, title: str, total: int, ops: list[Op], clients: list[Awaitable[None]],
                       done: Callable[[], int], end: Callable[[], float] | None = None) -> WorkloadResult:
        start_counters = self.redis.reset() if self.redis is not None else None
        cpu_before = self.cpu.sample()
        self.progress.start(title, total, done)
        if not self.deadline:
            self.deadline = time.perf_counter() + self.args.timeout
        try:
            await self._gather(clients)
        finally:
            await self.progress.stop()
            self.deadline = 0.0
        finished = time.perf_counter()
        cpu_after = self.cpu.sample()
        stop = end() if end is not None and end() else finished
        elapsed = stop - cpu_before[0]
        result = WorkloadResult(key, title, done(), 0, elapsed, ops, CpuMeter.fractions(cpu_before, cpu_after))
        if self.redis is not None and start_counters is not None and done():
            result.commands = self.redis.per_job(start_counters, done())
        return result


# --------------------------------------------------------------------------------------------
# The server under test (only when no --url is given)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: the kernel sends SIGTERM to the server if this benchmark dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


class ServerUnderTest:
    """A private Redis (no persistence) plus `python -m runtime` on a free port."""

    def __init__(self, server_prefix: str, processes: int = 1) -> None:
        self.prefix = shlex.split(server_prefix) if server_prefix else []
        self.processes = processes
        self.redis: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="ojs-bench-server-", suffix=".log", delete=False)
        self.url = ""
        self.redis_url = ""

    def start(self) -> None:
        from runtime.embedded_redis import EmbeddedRedis

        self.redis = EmbeddedRedis(persistence=False)
        self.redis_url = self.redis.start()  # main thread: its PDEATHSIG follows this thread
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env.pop("OJS_API_KEY", None)
        command = [*self.prefix, sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", str(port),
                   "--redis", self.redis_url, "--log-level", "warning", "--workers", str(self.processes)]
        self.proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals a --server-prefix wrapper too
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - prctl only, before any thread starts
        )
        self._wait_ready()

    @property
    def server_pid(self) -> int | None:
        """The broker's own pid: the child, or under --server-prefix the descendant running it."""
        if self.proc is None:
            return None
        if not self.prefix:
            return self.proc.pid
        try:
            import psutil

            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if "runtime" in child.cmdline() and "-m" in child.cmdline():
                    return int(child.pid)
        except Exception:
            return None
        return None

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"the server did not become ready in {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        self.log.close()
        if proc is not None and proc.returncode not in (0, -signal.SIGINT, -signal.SIGTERM):
            print(f"note: the server exited with code {proc.returncode}; log: {self.log.name}", file=sys.stderr)
        else:
            Path(self.log.name).unlink(missing_ok=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the server's process group (the server, and a --server-prefix wrapper with it)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _pid_listening_on(url: str) -> int | None:
    """The pid of a local server from --url (for its CPU figure), when it can be found."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == (parts.port or 80):
                return conn.pid
    except Exception:
        return None
    return None


# --------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    memory_gib = None
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    return {
        "nproc": nproc,
        "cpu_model": model or platform.processor() or "unknown",
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def print_report(results: list[WorkloadResult], header: dict[str, Any]) -> None:
    print()
    print(f"OJS HTTP throughput: {header['url']}  client={header['client']}  "
          f"N={header['jobs']} C={header['concurrency']} B={header['batch']} K={header['fetch_count']}"
          + (f"  server processes={header['processes']}" if header.get("processes") else ""))
    m = header["machine"]
    print(f"machine: {m['nproc']} CPU ({m['cpu_model']}), Python {m['python']}, {header.get('redis_version') or 'Redis n/a'}")
    print()
    head = (f"{'workload':<34}{'jobs':>7}{'reqs':>7}{'time s':>8}{'jobs/s':>9}{'req/s':>9}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'server':>8}{'redis':>7}{'client':>8}{'other':>7}{'srv us/job':>11}"
            f"{'errors':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        d = r.as_dict()
        lat = d["latency"]
        req_rate = _fmt(d["requests_per_s"], ",.0f") if d["requests"] != d["jobs"] else ""
        cpu = d["cpu_fraction_of_one_core"]
        print(f"{r.title:<34}{r.jobs:>7}{r.requests:>7}{r.elapsed_s:>8.2f}{_fmt(d['jobs_per_s'], ',.0f'):>9}"
              f"{req_rate:>9}{_fmt(lat['p50_ms'], '.2f'):>8}{_fmt(lat['p99_ms'], '.2f'):>8}"
              f"{_pct(cpu['server']):>8}{_pct(cpu['redis']):>7}{_pct(cpu['client']):>8}{_pct(cpu['other']):>7}"
              f"{_fmt(r.server_us_per_job(), ',.0f'):>11}{r.errors:>7}")
        if len(r.ops) > 1:
            for op in r.ops:
                s = latency_summary(op.latencies)
                print(f"{'  ' + op.name + ' requests':<34}{'':>7}{len(op.latencies):>7}{'':>8}{'':>9}"
                      f"{_fmt(len(op.latencies) / r.elapsed_s if r.elapsed_s else None, ',.0f'):>9}"
                      f"{_fmt(s['p50_ms'], '.2f'):>8}{_fmt(s['p99_ms'], '.2f'):>8}")
        for op in r.ops:
            if op.first_error:
                print(f"  first {op.name} error: {op.first_error}")
        for note in r.notes:
            print(f"  note: {note}")
    print(f"CPU: share of one core used while measured by the server process, Redis, this load generator, and "
          f"all other processes ({header['machine']['nproc']} cores in all).\n"
          f"srv us/job: the server's CPU time per job, the figure that other load skews least.")
    busy = [r.title for r in results if (r.cpu.get("other") or 0) > OTHER_LOAD_WARNING]
    if busy:
        print(f"WARNING: other processes used more than {OTHER_LOAD_WARNING:.0%} of a core during: "
              f"{'; '.join(busy)}. Those figures are low; rerun on a quiet machine.")

    counted = [r for r in results if r.commands]
    if counted:
        print()
        print("Redis commands per job (INFO commandstats, Lua-internal calls included, idle background subtracted)")
        head2 = f"{'workload':<34}{'EVALSHA/job':>12}{'cmds/job':>10}{'gross':>14}  top commands per job"
        print(head2)
        print("-" * (len(head2) + 40))
        for r in counted:
            assert r.commands is not None
            top = ", ".join(f"{name} {round(v, 2):g}" for name, v in list(r.commands["per_command_per_job"].items())[:8])
            gross = f"{r.commands['gross_evalsha_per_job']:.2f}/{r.commands['gross_commands_per_job']:.2f}"
            print(f"{r.title:<34}{r.commands['evalsha_per_job']:>12.2f}{r.commands['commands_per_job']:>10.2f}"
                  f"{gross:>14}  {top}")
        idle = header.get("idle_commands_per_s")
        if idle:
            total = sum(idle.values())
            print(f"idle background (scheduler and cron loops), subtracted above at its idle rate: {total:.0f} "
                  f"commands/s, {idle.get('evalsha', 0):.0f} EVALSHA/s; gross = EVALSHA/cmds per job without "
                  f"subtracting it")
    print()


# --------------------------------------------------------------------------------------------


WORKLOADS = ("enqueue", "batch", "fetch_ack", "fetch_batch_ack")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_throughput",
        description="Throughput and latency of the OJS HTTP endpoint (see benchmarks/README.md).",
    )
    parser.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080 "
                        "(default: start a private Redis and server, stopped at the end)")
    parser.add_argument("--redis", help="with --url: that server's Redis URL, to count commands per job")
    parser.add_argument("--api-key", default=os.environ.get("OJS_API_KEY"),
                        help="bearer token for a server with auth (env OJS_API_KEY)")
    parser.add_argument("--jobs", "-n", type=int, default=20_000, help="jobs per workload (default 20000)")
    parser.add_argument("--concurrency", "-c", type=int, default=32,
                        help="concurrent keep-alive clients / workers (default 32)")
    parser.add_argument("--batch", "-b", type=int, default=100, help="jobs per batch request (default 100)")
    parser.add_argument("--fetch-count", "-k", type=int, default=10,
                        help="jobs asked for per fetch in the fetch+ack workload (default 10)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: raw asyncio streams (default) or httpx.AsyncClient")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured enqueue requests first (default 500)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="time limit of one workload in seconds (default 300)")
    parser.add_argument("--processes", "-p", type=int, default=1,
                        help="server processes of the self-started server (ojs-server --workers; default 1)")
    parser.add_argument("--server-prefix", default="",
                        help="command put before the self-started server's python, e.g. a profiler")
    parser.add_argument("--json", metavar="PATH", help="write the figures and machine info as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        parser.error(f"--workloads: unknown {unknown}; choose from {','.join(WORKLOADS)}")
    args.workload_list = chosen
    for name in ("jobs", "concurrency", "batch", "fetch_count"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.redis and not args.url:
        parser.error("--redis goes with --url (a self-started server's Redis is counted anyway)")
    return args


async def run_workloads(bench: Bench) -> list[WorkloadResult]:
    args, log = bench.args, bench.log
    log("warming up ...")
    await bench.warmup()
    if bench.redis is not None:
        log(f"sampling the idle command rate for {IDLE_SAMPLE_S:.0f} s ...")
        await asyncio.to_thread(bench.redis.sample_idle, IDLE_SAMPLE_S)
    results = []
    steps: dict[str, Callable[[], Awaitable[WorkloadResult]]] = {
        "enqueue": bench.enqueue_single, "batch": bench.enqueue_batch, "fetch_ack": bench.fetch_ack,
        "fetch_batch_ack": bench.fetch_batch_ack,
    }
    for name in args.workload_list:
        log(f"workload {name} ...")
        result = await steps[name]()
        log(f"  {result.jobs} jobs in {result.elapsed_s:.2f} s: {result.jobs / result.elapsed_s:,.0f} jobs/s"
            + (f", {result.errors} errors" if result.errors else ""))
        results.append(result)
    return results


def _run_async(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()  # before anything starts: its load average is the machine's own
    server: ServerUnderTest | None = None
    redis: RedisStats | None = None
    started = time.perf_counter()
    try:
        if args.url:
            url, redis_url, server_pid = args.url.rstrip("/"), args.redis, _pid_listening_on(args.url)
        else:
            if not args.quiet:
                print("starting a private Redis and server ...", file=sys.stderr, flush=True)
            server = ServerUnderTest(args.server_prefix, args.processes)
            server.start()
            assert server.proc is not None
            url, redis_url = server.url, server.redis_url
            server_pid = server.server_pid
            if not args.quiet:
                print(f"server pid {server_pid} at {url}, Redis at {redis_url}", file=sys.stderr, flush=True)
        if redis_url:
            redis = RedisStats(redis_url)
        bench = Bench(args, url, server_pid, redis)
        try:
            results = _run_async(run_workloads(bench))
        except (OSError, asyncio.IncompleteReadError) as err:
            tail = f"\nserver log:\n{server.log_tail()}" if server is not None else ""
            print(f"benchmark stopped: lost the connection to {url}: {err!r}{tail}", file=sys.stderr)
            return 2
        header: dict[str, Any] = {
            "url": url if args.url else "self-started (python -m runtime, private Redis without persistence)",
            "client": args.client, "jobs": args.jobs, "concurrency": args.concurrency, "batch": args.batch,
            "fetch_count": args.fetch_count, "processes": args.processes if not args.url else None,
            "machine": machine,
            "redis_version": redis.version() if redis else None,
            "idle_commands_per_s": {k: round(v, 1) for k, v in redis.idle_rate.items()} if redis else None,
        }
        print_report(results, header)
        if args.json:
            document = {
                **header,
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join(shlex.quote(a) for a in sys.argv),
                "server_pid_measured": server_pid,
                "total_run_s": round(time.perf_counter() - started, 2),
                "results": [r.as_dict() for r in results],
            }
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document, indent=2) + "\n")
            print(f"wrote {path}", file=sys.stderr)
        return 1 if any(r.errors for r in results) else 0
    finally:
        if redis is not None:
            redis.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
