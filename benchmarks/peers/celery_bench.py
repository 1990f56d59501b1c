"""Celery (Redis transport): the app and the producer script.

Worker: ``celery -A celery_bench worker --pool prefork --concurrency P -Q bench --without-gossip
--without-mingle --without-heartbeat`` (Celery's own multiprocess pool: P child processes, one
task at a time each, fed by the parent). Settings: ``task_acks_late=True`` (ack after the task
ran: at least once; Celery's default acks before running, which is at most once),
``worker_prefetch_multiplier`` at its default 4, no result backend (``task_ignore_result``:
Celery stores nothing about finished tasks unless a backend is configured). gossip, mingle and
the worker heartbeat (worker-to-worker events: broker traffic that does nothing for this
workload) are off. ``task.apply_async`` is one
enqueue; Celery has no batch enqueue API (a group publishes its messages one by one), so the
bulk figure is n/a.
"""

import os
import sys

from celery import Celery

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

app = Celery("celery_bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=_common.QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(name="noop")
def noop(i):
    _common.handle_noop()


@app.task(name="lat")
def lat(i):
    _common.handle_lat()


class Adapter:
    is_async = False

    def open(self):
        self.tasks = {"noop": noop, "lat": lat}

    def enqueue(self, kind, i):
        self.tasks[kind].apply_async((i,), queue=_common.QUEUE)

    enqueue_bulk = None

    def close(self):
        pass


if __name__ == "__main__":
    _common.main(Adapter())
