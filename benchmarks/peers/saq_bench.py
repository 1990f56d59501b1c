"""SAQ: the worker settings and the producer script.

Worker: ``saq saq_bench.settings --workers P`` (SAQ's own multiprocess CLI), ``concurrency`` per
process from ``BENCH_CONCURRENCY`` (default 10 = SAQ's default). Everything else is SAQ's
default: jobs are kept after completion (ttl 600 s), a job whose worker died is retried by the
sweeper (at least once). ``queue.enqueue("fn", i=i)`` is one enqueue; SAQ has no batch enqueue
API (``Queue.map`` enqueues one by one and then waits for the results), so the bulk figure is
n/a.
"""

import os
import sys

from saq import Queue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


async def noop(ctx, *, i):
    await _common.ahandle_noop()


async def lat(ctx, *, i):
    await _common.ahandle_lat()


settings = {
    "queue": Queue.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"), name=_common.QUEUE),
    "functions": [noop, lat],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "10")),
}


class Adapter:
    is_async = True

    async def open(self):
        self.queue = Queue.from_url(os.environ["BENCH_REDIS_URL"], name=_common.QUEUE)
        await self.queue.connect()

    async def enqueue(self, kind, i):
        await self.queue.enqueue(kind, i=i)

    enqueue_bulk = None

    async def close(self):
        await self.queue.disconnect()


if __name__ == "__main__":
    _common.main(Adapter())
