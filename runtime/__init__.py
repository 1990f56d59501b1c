"""ojs-runtime: an Open Job Spec broker on Redis and a multiprocess worker runtime.

The public surface for handler modules and producers::

    from runtime import handler, JobContext, Retry, Discard, Client, execution_middleware

Task handles (what ``@handler`` returns) enqueue through the client of
:func:`using_client`, else a default one (:func:`configure`); see :mod:`runtime.default_client`.

``RedisConnection`` is the runtime's own pipelined Redis connection (redis://, rediss:// and unix:// URLs),
for handlers that run quick commands of their own: ``conn = RedisConnection.from_url(url)`` at import time, then
``await conn.execute("INCR", key)`` in the handler. One socket serves every coroutine of the
process (a forked pool opens its own on first use); a blocking command (BLPOP, XREAD BLOCK)
would hold it for all of them, so use redis-py for those.
"""

from __future__ import annotations

from runtime.broker.wire import Wire as RedisConnection
from runtime.client import Client, Draft, Step
from runtime.context import Job, JobContext
from runtime.default_client import close_default_client, configure, current_client, using_client
from runtime.errors import Discard, Retry
from runtime.handlers import execution_middleware, handler, observers
from runtime.job_handle import JobFailed, JobHandle, SyncJobHandle
from runtime.middleware import CallNext, Chain, Middleware, Observer
from runtime.tasks import Task, TaskOptions

__all__ = [
    "CallNext",
    "Chain",
    "Client",
    "Discard",
    "Draft",
    "Step",
    "Job",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "SyncJobHandle",
    "Task",
    "TaskOptions",
    "Middleware",
    "Observer",
    "RedisConnection",
    "Retry",
    "close_default_client",
    "configure",
    "current_client",
    "execution_middleware",
    "handler",
    "observers",
    "using_client",
]
