"""A starting supervisor hands back at once the jobs of pools that died with an earlier runtime.

After a whole-service kill (SIGKILL of every process, a crash of the machine's OOM killer, a
reboot) the jobs the pools held stay ``active`` until their lease expires (60 s) or the
scheduler's silent-worker reaper acts (several heartbeat intervals). A supervisor starting on
the same host can do better: pool worker ids say which host, supervisor and process they ran in
(:mod:`runtime.pool_ids`), so a pool of this host is known dead when its supervisor is no longer
running and its own process is gone, or, should its pid be alive (a reused pid, or a pool of a
SIGKILLed supervisor that is still draining), when its heartbeats lapsed for
``LAPSE_FACTOR`` of its intervals as well (a draining pool keeps beating).

Nothing tells what such a pool was doing with its jobs, so they get the death verdicts of a pool
without a run record (:func:`runtime.broker.pool_ops.death_verdicts`, ``running=None``): no loss
is charged, and each job runs alone next.
"""

from __future__ import annotations

import logging
import time

import redis

from runtime import pool_ids
from runtime.broker.clients import blocking_client
from runtime.broker.keys import Keys
from runtime.broker.pool_ops import release_worker_blocking
from runtime.broker.shards import shard_settings
from runtime.config import Settings

logger = logging.getLogger(__name__)

LAPSE_FACTOR = 2
TIMEOUT_S = 10.0


def dead_pools(settings: Settings, host: str) -> list[str]:
    """Worker ids of this host's pools whose runtime is gone (see the module docstring), in
    every shard of the namespace (a pool registers in the one it serves)."""
    dead: list[str] = []
    for shard in shard_settings(settings):
        dead += [worker_id for worker_id in _dead_pools_of(shard, host) if worker_id not in dead]
    return dead


def _dead_pools_of(settings: Settings, host: str) -> list[str]:
    keys = Keys(settings.key_prefix)
    client = blocking_client(settings, socket_timeout=TIMEOUT_S)
    try:
        registered = client.zrange(keys.workers, 0, -1, withscores=True)
        ours = [(w.decode(), beat, found) for w, beat in registered
                if (found := pool_ids.parse(w.decode())) is not None and found.host == host]
        pipe = client.pipeline(transaction=False)
        for worker_id, _beat, _found in ours:
            pipe.hget(keys.worker(worker_id), "heartbeat_interval_ms")
        intervals = pipe.execute() if ours else []
    finally:
        client.close()
    now_ms = time.time() * 1000
    dead = []
    for (worker_id, beat_ms, found), interval in zip(ours, intervals, strict=True):
        if pool_ids.is_running(found.supervisor_pid, found.supervisor_start):
            continue  # a runtime that still runs (perhaps another one on this host)
        interval_ms = max(int(interval or 0), settings.worker_heartbeat_interval_ms)
        lapsed = now_ms - beat_ms > LAPSE_FACTOR * interval_ms
        if pool_ids.start_token(found.pid) is None or lapsed:
            dead.append(worker_id)
    return dead


def recover(settings: Settings, host: str) -> int:
    """Hand back the jobs of this host's dead pools; the exit code of the process doing it."""
    try:
        dead = dead_pools(settings, host)
    except redis.RedisError as err:
        logger.warning("could not look for the pools of an earlier run: %s", err)
        return 1
    failed = 0
    for worker_id in dead:
        try:
            ids = release_worker_blocking(settings, worker_id, crashed=True, running=None, timeout_s=TIMEOUT_S)
        except Exception as err:
            logger.warning("could not hand back the jobs of %s (from an earlier run): %s", worker_id, err)
            failed += 1
            continue
        logger.warning("pool %s of an earlier run is gone: handed back its %d job(s)%s", worker_id,
                       len(ids), f": {', '.join(ids)}" if ids else "")
    return 1 if failed else 0
