"""ojs-runtime: an Open Job Spec broker on Redis and a multiprocess worker runtime.

The public surface for handler modules and producers::

    from runtime import handler, JobContext, Retry, Discard, Client, execution_middleware

``RedisConnection`` is the runtime's own pipelined Redis connection (redis:// and unix:// URLs),
for handlers that run quick commands of their own: ``conn = RedisConnection.from_url(url)`` at import time, then
``await conn.execute("INCR", key)`` in the handler. One socket serves every coroutine of the
process (a forked pool opens its own on first use); a blocking command (BLPOP, XREAD BLOCK)
would hold it for all of them, so use redis-py for those.
"""

from __future__ import annotations

from runtime.broker.wire import Wire as RedisConnection
from runtime.client import Client, Draft, Step
from runtime.context import Job, JobContext
from runtime.errors import Discard, Retry
from runtime.handlers import execution_middleware, handler, observers
from runtime.middleware import CallNext, Chain, Middleware, Observer

__all__ = [
    "CallNext",
    "Chain",
    "Client",
    "Discard",
    "Draft",
    "Step",
    "Job",
    "JobContext",
    "Middleware",
    "Observer",
    "RedisConnection",
    "Retry",
    "execution_middleware",
    "handler",
    "observers",
]
