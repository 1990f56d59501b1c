"""ojs-runtime: an Open Job Spec broker on Redis and a multiprocess worker runtime.

The public surface for handler modules and producers::

    from runtime import handler, JobContext, Retry, Discard, Client, execution_middleware
"""

from __future__ import annotations

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
    "Retry",
    "execution_middleware",
    "handler",
    "observers",
]
