"""Real mode: a real Redis, the broker's own scripts, and an embedded worker called ``drain``.

Each context has a key prefix of its own (``{ojs-test-<random>}:``), so tests running at the
same time on one Redis, in one process or in several (pytest-xdist), never see each other's
jobs; the context deletes its keys when it ends. Without a URL, one embedded Redis is started
for the process (without persistence) and stopped when the process exits.

``drain`` claims jobs through the same fetch script as a pool, one at a time, runs each in this
process (:mod:`runtime.testing.running`) and settles it through ack.lua / nack.lua, so the
retry policy, backoff, workflows and unique locks are the broker's. Before each claim it runs
a scheduler step (due jobs and retries are promoted) and a cron tick, both on the test clock.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker import clients, failures
from runtime.broker.core import Broker, Completion, NackResult
from runtime.broker.crons import Crons
from runtime.broker.render import encode_job
from runtime.broker.workflows import WorkflowRequest
from runtime.claimed_job import job_of_hash
from runtime.client import Client
from runtime.config import Settings, settings_from_env
from runtime.context import ProgressThrottle, ProgressUpdate
from runtime.embedded_redis import EmbeddedRedis
from runtime.envelope import CRON_FIELDS, CronRequest, decode_checkpoint
from runtime.executor import Completed, settle
from runtime.testing.kit import DrainSummary, TestContext, execution_record, redirect, summary_of

_envelope = msgspec.json.Decoder(dict[str, Any])
_json = msgspec.json.Decoder()
_embedded_lock = threading.Lock()
_embedded: EmbeddedRedis | None = None
WORKER_PREFIX = "ojs-test-worker-"


def unique_prefix() -> str:
    """A key prefix no other test uses (hash-tagged, like the default one)."""
    return f"{{ojs-test-{secrets.token_hex(6)}}}:"


def shared_embedded_url() -> str:
    """The URL of this process' embedded Redis, started on first use."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            server = EmbeddedRedis(persistence=False)
            server.start()
            atexit.register(server.stop)
            _embedded = server
        return _embedded.url


class _RecordingWorkflows:
    """The client's workflow service, noting each workflow created for the workflow assertions."""

    def __init__(self, inner: Any, context: TestContext) -> None:
        self._inner, self._context = inner, context

    async def create(self, req: WorkflowRequest) -> dict[str, Any]:
        created: dict[str, Any] = await self._inner.create(req)
        self._context.record_workflow(req, created)
        return created

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RealContext(TestContext):
    mode = "real"

    def __init__(self, redis_url: str | None = None, *, key_prefix: str | None = None) -> None:
        super().__init__()
        self.redis_url = redis_url or shared_embedded_url()
        self.key_prefix = key_prefix or unique_prefix()
        env = settings_from_env(redis_url=self.redis_url)  # the TLS files, as every process takes them
        self.settings = Settings(redis_url=self.redis_url, key_prefix=self.key_prefix, redis_tls_ca=env.redis_tls_ca,
                                 redis_tls_cert=env.redis_tls_cert, redis_tls_key=env.redis_tls_key)
        self.worker_id = WORKER_PREFIX + secrets.token_hex(4)
        self._inspect = clients.blocking_from_url(self.redis_url, key_prefix=self.settings.key_prefix,
                                                  **clients.tls_options(self.settings, self.redis_url))

    def bind_client(self, client: Client, init: Callable[..., None], settings: Settings | None,
                    middleware: Sequence[Any], **options: Any) -> None:
        settings = msgspec.structs.replace(settings or self.settings, redis_url=self.redis_url, key_prefix=self.key_prefix)
        init(client, self.redis_url, settings=settings, middleware=middleware, **options)
        redirect(client, client._broker, _RecordingWorkflows(client._workflows, self))  # noqa: SLF001

    def close(self) -> None:
        try:
            self._delete_keys()
        finally:
            self._inspect.close()
            super().close()

    # --- reading --------------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        keys = sorted(self._inspect.scan_iter(match=self._glob("job:*"), count=1000))
        with self._inspect.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            hashes = pipe.execute()
        jobs = [_envelope.decode(encode_job(h)) for h in hashes if h]
        return sorted(jobs, key=lambda j: (j.get("created_at") or "", j["id"]))

    def job(self, job_id: str) -> dict[str, Any]:
        fields = self._inspect.hgetall(f"{self.key_prefix}job:{job_id}")
        if not fields:
            raise AssertionError(f"no job {job_id} under this test's prefix {self.key_prefix}")
        return _envelope.decode(encode_job(fields))

    def event_log(self) -> list[dict[str, Any]]:
        rows = self._inspect.xrange(f"{self.key_prefix}events")
        return [{"type": f[b"type"].decode(), "subject": f[b"subject"].decode(), "time": int(f[b"time"]),
                 "data": _json.decode(f[b"data"])} for _id, f in rows]

    def clear_all(self) -> None:
        super().clear_all()
        self._delete_keys()

    # --- crons ----------------------------------------------------------------------------------

    async def register_cron(self, name: str, expression: str, type: str, args: Sequence[Any] = (), *,
                            options: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Register a cron in this test's namespace (as ``POST /ojs/v1/cron`` does)."""
        own = {k: v for k, v in fields.items() if k in CRON_FIELDS}
        request = msgspec.convert({"name": name, "expression": expression, "type": type, "args": list(args),
                                   "options": options, **own}, CronRequest)
        job_fields = {k: v for k, v in fields.items() if k not in CRON_FIELDS}
        async with self._broker() as broker:
            view, _new = await Crons(broker).register(request, job_fields)
            return view

    # --- waiting on workers outside the test ---------------------------------------------------

    async def wait_for_state(self, job_id: str, *states: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait until the job is in one of `states` (processed by ``drain`` in another task, or
        by an ``ojs-run`` started on this context's Redis and ``key_prefix``); returns its
        envelope. Woken by the broker's event stream, not by polling; AssertionError, saying
        what state it is in, after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        async with self._broker() as broker:
            events = broker.keys.events
            newest = await broker.redis.xrevrange(events, count=1)
            cursor = newest[0][0] if newest else b"0-0"  # events after this one wake us
            while True:
                fields = await broker.redis.hgetall(broker.keys.job(job_id))
                state = fields.get(b"state", b"").decode()
                if state in states:
                    return _envelope.decode(encode_job(fields))
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise AssertionError(f"job {job_id} is still {state or 'missing'!r} after {timeout_s:g} s "
                                         f"(waiting for {', '.join(states)})")
                reply = await broker.redis.xread({events: cursor}, count=1000, block=max(1, round(min(left_s, 1.0) * 1000)))
                if reply:
                    cursor = reply[-1][1][-1][0]

    # --- the embedded worker --------------------------------------------------------------------

    async def drain(self, queue: str | None = None, *, max_jobs: int | None = None, timeout_s: float = 30.0,
                    with_scheduled: bool = False) -> DrainSummary:
        """Run everything due in `queue` (default: every queue of this namespace), including what
        the jobs enqueue, until nothing is left to claim; a retry waiting on its backoff, or a
        scheduled job, is due once the test clock reaches it (``advance_time``). A job whose type
        has no handler in this process fails without retry, as in a pool that claimed it."""
        if with_scheduled:
            raise NotImplementedError("real mode runs scheduled jobs when due: use advance_time")
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        timed_out = False
        async with self._broker() as broker:
            crons = Crons(broker)
            while max_jobs is None or len(runs) < max_jobs:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                await broker.scheduler_step()
                await crons.tick()
                queues = [queue] if queue else await self._queues(broker)
                claimed = await broker.fetch(queues, count=1, worker_id=self.worker_id) if queues else []
                if not claimed:
                    break
                runs.append(await self._run_claimed(broker, claimed[0]))
            await broker.redis.zrem(broker.keys.workers, self.worker_id)
            await broker.redis.delete(broker.keys.worker(self.worker_id), broker.keys.worker_jobs(self.worker_id))
        return summary_of(runs, timed_out=timed_out)

    async def _run_claimed(self, broker: Broker, fields: dict[bytes, bytes]) -> dict[str, Any]:
        claim = fields.get(b"claim", b"").decode()
        job = job_of_hash(fields)
        progress = ProgressThrottle(job.id, sink=functools.partial(_write_progress, broker, claim), interval_s=0.0)
        checkpoint = fields.get(b"checkpoint")
        ctx = self.runner.context(job, worker_id=self.worker_id, loop=asyncio.get_running_loop(), progress=progress,
                                  claim=claim, last_checkpoint=decode_checkpoint(checkpoint) if checkpoint else None)
        before = _envelope.decode(encode_job(fields))
        outcome = await self.runner.run(ctx)
        await ctx.flush_progress()
        item = settle(outcome, ctx, worker_id=self.worker_id, now_ms=timefmt.now_ms())
        result: Any = None
        error = None
        if item is None:
            name = "cancelled"
        elif isinstance(item, Completion):
            (acked,) = await broker.ack_many([item])
            if isinstance(acked, Exception):
                name = await _refused(broker, job.id, acked)
            else:
                name = "completed"
                if isinstance(outcome, Completed) and outcome.result:
                    result = _json.decode(outcome.result)
        else:
            (nacked,) = await broker.fail_many([item], now_ms=timefmt.now_ms())
            if isinstance(nacked, Exception):
                name = await _refused(broker, job.id, nacked)
            else:
                assert isinstance(nacked, NackResult)
                name = failures.settled_outcome(item.verdict, nacked.state,
                                                on_exhaustion=(job.retry or {}).get("on_exhaustion"))
                error = _json.decode(item.error) if item.error else None
        run = execution_record(before, name, result=result, error=error)
        self.executions.append(run)
        return run

    async def _queues(self, broker: Broker) -> list[str]:
        """Every queue of the namespace: those enqueued into, and those that only a workflow's
        later step uses (advance.lua makes them available without registering them)."""
        names = {q.decode() for q in await broker.redis.hkeys(broker.keys.queues)}
        head, tail = len(self.key_prefix) + len("queue:"), -len(":available")
        async for key in broker.redis.scan_iter(match=self._glob("queue:*:available"), count=1000):
            names.add(key.decode()[head:tail])
        return sorted(names)

    # --- plumbing -------------------------------------------------------------------------------

    def _broker(self) -> _OpenBroker:
        return _OpenBroker(self.redis_url, self.settings)

    def _glob(self, pattern: str) -> str:
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.key_prefix)
        return escaped + pattern

    def _delete_keys(self) -> None:
        batch: list[bytes] = []
        for key in self._inspect.scan_iter(match=self._glob("*"), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                self._inspect.delete(*batch)
                batch.clear()
        if batch:
            self._inspect.delete(*batch)


class _OpenBroker:
    """A broker on its own connection, for the life of one ``async with`` (one event loop)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url, self._settings = url, settings
        self._redis: Redis | None = None
        self._broker: Broker | None = None

    async def __aenter__(self) -> Broker:
        self._redis = clients.from_url(self._url, key_prefix=self._settings.key_prefix,
                                       **clients.tls_options(self._settings, self._url))
        self._broker = Broker(self._redis, self._settings)
        return self._broker

    async def __aexit__(self, *exc: object) -> None:
        assert self._broker is not None and self._redis is not None
        await self._broker.close()
        await self._redis.aclose()


async def _refused(broker: Broker, job_id: str, err: Exception) -> str:
    """A settle the broker refused: fine for a job cancelled while it ran (a pool logs it and
    moves on; the job stays cancelled), an error of the kit or the test otherwise."""
    state = await broker.redis.hget(broker.keys.job(job_id), "state")
    if state == b"cancelled":
        return "cancelled"
    raise err


async def _write_progress(broker: Broker, claim: str, job_id: str, update: ProgressUpdate) -> None:
    await broker.progress(job_id, value=update.value, message=update.message, data=update.data,
                          checkpoint=update.checkpoint, claim=claim)
