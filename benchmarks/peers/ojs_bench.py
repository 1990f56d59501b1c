"""ojs: the producer script (the workers are ``ojs-run benchmarks.ojs_handlers``).

Runs under the project's python with the repository on PYTHONPATH, with the protocol of
_common.py, plus:

* ``--api python`` (default): ``runtime.client.Client`` (``enqueue`` per job, ``enqueue_many`` per
  batch of ``--batch``), or, with ``BENCH_OJS_API=broker`` or before the client existed,
  ``Broker.enqueue`` with ``job_from_body`` (what the HTTP endpoint does per request, minus HTTP).
  Either way one enqueue.lua call per job, or per batch.
* ``--api http --url URL``: ``POST /ojs/v1/jobs`` per job, ``POST /ojs/v1/jobs/batch`` per batch,
  on ``--connections`` keep-alive connections (default 1: one producer, one job at a time), with
  the raw HTTP/1.1 client of benchmarks/http_throughput.py.

Jobs: ``{"type": "bench.noop", "args": [i], "options": {"queue": "bench"}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))  # the repository root

import _common  # noqa: E402
import msgspec  # noqa: E402
import uvloop  # noqa: E402

TYPES = {"noop": "bench.noop", "lat": "bench.lat"}


def body(kind: str, i: int) -> bytes:
    return msgspec.json.encode({"type": TYPES[kind], "args": [i], "options": {"queue": _common.QUEUE}})


class BrokerAdapter:
    """Broker.enqueue + job_from_body, one script call per call."""

    is_async = True
    api = "Broker.enqueue"

    async def open(self) -> None:
        from redis.asyncio import Redis

        from runtime.broker.core import Broker
        from runtime.broker.records import job_from_body
        from runtime.config import Settings

        url = os.environ["BENCH_REDIS_URL"]
        self.redis = Redis.from_url(url)
        self.broker = Broker(self.redis, Settings(redis_url=url))
        self.build = job_from_body

    async def enqueue(self, kind: str, i: int) -> None:
        now = time.time_ns() // 1_000_000
        await self.broker.enqueue([self.build(body(kind, i), now_ms=now)], now_ms=now)

    async def enqueue_bulk(self, kind: str, items: list[int]) -> None:
        now = time.time_ns() // 1_000_000
        await self.broker.enqueue([self.build(body(kind, i), now_ms=now) for i in items], now_ms=now)

    async def close(self) -> None:
        await self.redis.aclose()


class ClientAdapter:
    """runtime.client.Client: the runtime's producer API (``enqueue``, ``enqueue_many``)."""

    is_async = True
    api = "runtime.client.Client"

    async def open(self) -> None:
        from runtime.client import Client, Draft

        self.client = Client(os.environ["BENCH_REDIS_URL"])
        self.draft = Draft

    async def enqueue(self, kind: str, i: int) -> None:
        await self.client.enqueue(TYPES[kind], [i], queue=_common.QUEUE)

    async def enqueue_bulk(self, kind: str, items: list[int]) -> None:
        job_type, draft = TYPES[kind], self.draft
        await self.client.enqueue_many([draft(type=job_type, args=[i], options={"queue": _common.QUEUE})
                                        for i in items])

    async def close(self) -> None:
        await self.client.close()


class HttpAdapter:
    """The HTTP endpoint, on `connections` keep-alive connections."""

    is_async = True
    api = "HTTP"

    def __init__(self, url: str, connections: int) -> None:
        self.url, self.connections = url, max(1, connections)

    async def open(self) -> None:
        from benchmarks.http_throughput import RawConnection

        parts = urlsplit(self.url)
        self.conns = [RawConnection(parts.hostname or "127.0.0.1", parts.port or 80, "", {})
                      for _ in range(self.connections)]
        await asyncio.gather(*(c.connect() for c in self.conns))

    async def _post(self, conn, path: str, payload: bytes) -> None:
        status, reply = await conn.call("POST", path, payload)
        if status != 201 and status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {reply[:300]!r}")

    async def enqueue(self, kind: str, i: int) -> None:
        await self._post(self.conns[0], "/ojs/v1/jobs", body(kind, i))

    async def enqueue_bulk(self, kind: str, items: list[int]) -> None:
        payload = b'{"jobs":[' + b",".join(body(kind, i) for i in items) + b"]}"
        await self._post(self.conns[0], "/ojs/v1/jobs/batch", payload)

    async def enqueue_many_single(self, n: int, stop_at: float = float("inf")) -> int:
        """n single-job requests over all connections (used when connections > 1); returns how
        many were sent before `stop_at` (time.monotonic) ran out."""
        issued = 0

        async def client(conn) -> None:
            nonlocal issued
            while issued < n and time.monotonic() <= stop_at:
                i = issued
                issued += 1
                await self._post(conn, "/ojs/v1/jobs", body("noop", i))

        await asyncio.gather(*(client(c) for c in self.conns))
        return issued

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.conns))


def pick_python_adapter():
    """runtime.client.Client when the runtime has it (BENCH_OJS_API=broker forces Broker.enqueue)."""
    if os.environ.get("BENCH_OJS_API") == "broker":
        return BrokerAdapter()
    try:
        from runtime.client import Client, Draft  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "runtime.client":
            raise  # a broken tree must fail the step, not silently measure another API
        return BrokerAdapter()
    return ClientAdapter()


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--api", default="python", choices=["python", "http"])
    pre.add_argument("--url")
    pre.add_argument("--connections", type=int, default=1)
    known, rest = pre.parse_known_args()
    if known.api == "http":
        if not known.url:
            sys.exit("--api http needs --url")
        adapter = HttpAdapter(known.url, known.connections)
        if known.connections > 1 and rest and rest[0] == "enqueue":
            _concurrent_http(adapter, rest)
            return
    else:
        adapter = pick_python_adapter()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    _common.main(adapter, rest)


def _concurrent_http(adapter: HttpAdapter, rest: list[str]) -> None:
    """W1 single through HTTP with C connections: the figure the HTTP target is about."""
    args = _common.parse_args(rest)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await adapter.open()
        try:
            await adapter.enqueue_many_single(args.warmup)
            sys.stdout.write("READY\n")
            sys.stdout.flush()
            if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "GO":
                sys.exit(3)
            started = time.perf_counter()
            done = await adapter.enqueue_many_single(args.jobs, _common.deadline(args))
            _common.emit(_common.finished(args, done, started))
            await loop.run_in_executor(None, sys.stdin.readline)
        finally:
            await adapter.close()

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run())


if __name__ == "__main__":
    main()
