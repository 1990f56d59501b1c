"""arq: the worker settings and the producer script.

Worker: ``arq arq_bench.WorkerSettings`` once per process (arq has no multiprocess CLI: the
harness starts P of them). Settings are arq's defaults except ``max_jobs`` (concurrency per
process, ``BENCH_CONCURRENCY``, default 10 = arq's default). ``keep_result`` stays at its
default (3600 s): arq keeps every job's result, as ojs keeps every completed job. ``poll_delay``
stays at its default 0.5 s: arq polls the queue (no blocking pop, no notification), so an idle
worker picks a new job up after up to 0.5 s; lowering it trades Redis load for latency. A
worker that dies mid-job leaves an in-progress key that expires, after which the job runs again
(at least once). arq has no batch enqueue API, so the bulk figure is n/a.
"""

import os
import sys

from arq.connections import RedisSettings, create_pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


async def noop(ctx, i):
    await _common.ahandle_noop()


async def lat(ctx, i):
    await _common.ahandle_lat()


class WorkerSettings:
    functions = [noop, lat]
    queue_name = _common.QUEUE
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "10"))
    log_results = False


class Adapter:
    is_async = True

    async def open(self):
        self.pool = await create_pool(RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]))

    async def enqueue(self, kind, i):
        await self.pool.enqueue_job(kind, i, _queue_name=_common.QUEUE)

    enqueue_bulk = None

    async def close(self):
        await self.pool.aclose()


if __name__ == "__main__":
    _common.main(Adapter())
