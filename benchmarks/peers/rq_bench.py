"""RQ: the job functions and the producer script.

Worker: ``rq worker-pool -n P -w rq.worker.SimpleWorker --url URL bench`` (RQ's own multiprocess
pool). SimpleWorker runs jobs in the worker process: RQ's default Worker forks a new process
per job, which dominates the cost of a short job.
RQ has no concurrency within a process (one job at a time per worker). Job results are kept
(result_ttl default 500 s). At-least-once caveat: RQ moves the job of a dead worker to the
failed registry rather than re-running it (unless the job has a Retry), so RQ's guarantee is
weaker than the others'. Producer: ``q.enqueue(fn, i)``; bulk: ``q.enqueue_many`` of
``Queue.prepare_data`` items (one Redis pipeline per batch).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def noop(i):
    _common.handle_noop()


def lat(i):
    _common.handle_lat()


class Adapter:
    is_async = False

    def open(self):
        import redis
        import rq_bench  # the worker imports the functions from this module name
        from rq import Queue

        self.redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        self.queue = Queue(_common.QUEUE, connection=self.redis)
        self.fns = {"noop": rq_bench.noop, "lat": rq_bench.lat}

    def enqueue(self, kind, i):
        self.queue.enqueue(self.fns[kind], i)

    def enqueue_bulk(self, kind, items):
        fn = self.fns[kind]
        self.queue.enqueue_many([self.queue.prepare_data(fn, (i,)) for i in items])

    def close(self):
        self.redis.close()


if __name__ == "__main__":
    _common.main(Adapter())
