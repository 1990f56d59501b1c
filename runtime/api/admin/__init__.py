"""The admin API (ojs-admin-api.md): everything under /ojs/v1/admin/, and the list routes an
admin UI calls beside it. Each module documents the cost of its queries: every list reads an
index, bounded per call, never a scan of all jobs."""

from __future__ import annotations

from runtime.api.admin import dead_letter, jobs, queues, system, workers
from runtime.api.routing import Router
from runtime.api.services import Services


def register(router: Router, services: Services) -> None:
    for module in (queues, jobs, workers, dead_letter, system):
        module.register(router, services)
