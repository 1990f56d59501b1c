"""dramatiq (RedisBroker): the workers' module and the producer script.

Worker: ``dramatiq dramatiq_bench --processes P --threads C --queues bench`` (dramatiq's own
multiprocess CLI). Producer: ``python dramatiq_bench.py enqueue|prefill|latency ...`` (see
_common.py). Settings: RedisBroker with its defaults (messages are acked after the actor returns,
and a dead worker's unacked messages are requeued by the heartbeat/maintenance logic: at least
once), the default middleware, no results backend (dramatiq stores no results unless one is
configured). ``actor.send()`` is one enqueue; dramatiq has no batch enqueue API, so the bulk
figure is n/a. ``BENCH_REDIS_URL`` must be set (the broker is made at import time).
"""

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=_common.QUEUE, actor_name="noop")
def noop(i):
    _common.handle_noop()


@dramatiq.actor(queue_name=_common.QUEUE, actor_name="lat")
def lat(i):
    _common.handle_lat()


class Adapter:
    is_async = False
    actors = {"noop": noop, "lat": lat}

    def open(self):
        pass

    def enqueue(self, kind, i):
        self.actors[kind].send(i)

    enqueue_bulk = None

    def close(self):
        broker.close()


if __name__ == "__main__":
    _common.main(Adapter())
