"""Assembles the router from the endpoint modules."""

from __future__ import annotations

from runtime.api import (
    ack_batch,
    admin,
    crons,
    dashboard,
    job_priority,
    jobs,
    queues,
    rate_limits,
    schemas,
    system,
    tenancy,
    workers,
    workflows,
)
from runtime.api.routing import Router
from runtime.api.services import Services
from runtime.api.webhooks import register as register_webhooks


def build_router(services: Services) -> Router:
    router = Router()
    for module in (system, jobs, job_priority, workers, ack_batch, queues, crons, workflows, rate_limits, tenancy, admin,
                   schemas,
                   dashboard):
        module.register(router, services)
    register_webhooks(router, services)
    return router
