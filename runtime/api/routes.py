"""Assembles the router from the endpoint modules."""

from __future__ import annotations

from runtime.api import admin, crons, dashboard, jobs, queues, schemas, system, workers, workflows
from runtime.api.routing import Router
from runtime.api.services import Services


def build_router(services: Services) -> Router:
    router = Router()
    for module in (system, jobs, workers, queues, crons, workflows, admin, schemas, dashboard):
        module.register(router, services)
    return router
