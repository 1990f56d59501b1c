"""Manifest, health, readiness and metrics.

* ``/health``: 200 ``ok`` with the Redis round-trip time; 200 ``degraded`` when Redis is slow
  (above ``DEGRADED_LATENCY_MS``) or the worker pools have stalled; 503 ``unhealthy`` when Redis
  does not answer within ``PROBE_TIMEOUT_S``. It never names the Redis server.
* ``/ready``: 503 while draining or quiet, while Redis does not answer, and (under ``ojs-run``)
  while a pool cannot reach Redis, until a pool has fetched and whenever no pool has fetched for
  ``--stall-timeout``.

Both read the last result of the background probe (:mod:`runtime.api.probe`), never Redis itself:
they answer under any load, and cost nothing shared.
* ``/metrics``: the Prometheus exposition (summed over every process under ``ojs-run``), with the
  queue gauges read from Redis at scrape time; without Redis, the rest is still served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtime import metrics, timefmt
from runtime.api.probe import PROBE_TIMEOUT_S
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker import BACKEND_ERRORS

logger = logging.getLogger(__name__)

IMPLEMENTATION_VERSION = "0.1.0"
CONFORMANCE_LEVEL = 4
DEGRADED_LATENCY_MS = 100.0


def manifest() -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "ojs_version": "1.0",
        "implementation": {"name": "ojs-runtime", "version": IMPLEMENTATION_VERSION, "language": "python"},
        "conformance_level": CONFORMANCE_LEVEL,
        "conformance_tier": "runtime",
        "protocols": ["http"],
        "backend": "redis",
        "unique_job_strength": "strong",
        "capabilities": {
            "batch_enqueue": True, "cron_jobs": True, "dead_letter": True, "delayed_jobs": True,
            "job_ttl": True, "priority_queues": True, "rate_limiting": True, "schema_validation": True,
            "unique_jobs": {"strength": "strong", "mechanism": "atomic check-and-insert in one Lua script"},
            "workflows": True, "pause_resume": True, "admin_api": True, "backpressure": True,
            "maintenance_mode": True,
        },
        "extensions": {
            "events": {"transport": ["http-polling"]},
            "webhooks": {"base": "/ojs/v1/webhooks", "signature": "hmac-sha256", "delivery": "at-least-once",
                         "secret_rotation": True, "test_endpoint": True, "dead_delivery_retry": True},
            "admin-api": {"base": "/ojs/v1/admin", "bulk_max": 1000, "stats_history": ["1m", "5m", "15m", "1h", "1d"],
                          "maintenance_mode": True, "read_only_keys": True},
            "backpressure": {"strategies": ["reject"], "bounds": ["max_depth"]},
            "dead-letter": {"list": True, "stats": True, "retry": True, "delete": True, "purge": True},
            "fair-scheduling": {"strategies": ["weighted", "strict", "round_robin"], "pools": True},
            "multi-tenancy": {"isolation": "shared", "header": "X-OJS-Tenant", "fairness": "fair_queuing",
                              "stats": "/ojs/v1/admin/tenants/{id}/stats", "limits": False},
            "progress": True,
            "rate-limiting": {"strategies": ["concurrency", "rate", "throttle"], "window": "sliding",
                              "on_limit": ["wait", "reschedule", "drop"], "queue_level": True,
                              "override": True, "inspect": "/ojs/v1/rate-limits/{key}"},
            "schema-registry": {"base": "/ojs/v1/schemas", "admin_base": "/ojs/v1/admin/schemas",
                                "dialect": "https://json-schema.org/draft/2020-12/schema",
                                "validation_modes": ["strict"]},
            "job-versioning": {"version_field": "version", "type_suffix": "@", "fetch_ranges": True,
                               "pools_declare_ranges": False},
            "serverless": {"ack": "/ojs/v1/jobs/{id}/ack", "nack": "/ojs/v1/jobs/{id}/nack"},
        },
        "endpoints": {"base": "/ojs/v1", "manifest": "/ojs/manifest", "health": "/ojs/v1/health",
                      "admin": "/ojs/v1/admin"},
    }


def register(router: Router, services: Services, *, probes_only: bool = False) -> None:
    """The system routes; `probes_only` leaves out the manifest (the ``--metrics-port`` app)."""
    body = manifest()
    probe = services.probe

    async def get_manifest(request: Request) -> Response:
        return json_response(200, body)

    async def health(request: Request) -> Response:
        reply: dict[str, Any] = {"status": "ok", "version": "1.0", "uptime_seconds": services.uptime_s}
        reading = probe.reading()
        if not reading.reachable:
            reply["status"] = "unhealthy"
            reply["backend"] = {"type": "redis", "status": "unhealthy", "error": "job store unavailable"}
            return json_response(503, reply)
        latency = reading.latency_ms
        reply["backend"] = {"type": "redis", "status": "ok", "latency_ms": round(latency, 3)}
        problems = [f"redis latency {latency:.0f} ms"] if latency > DEGRADED_LATENCY_MS else []
        if latency > DEGRADED_LATENCY_MS:
            reply["backend"]["status"] = "degraded"
        if services.board is not None:
            why = services.board.not_ready()
            reply["runtime"] = {"status": why or "ok"}
            if why is not None and why.startswith(("stalled", "redis unreachable")):
                problems.append(why)
        if problems:
            reply["status"], reply["problems"] = "degraded", problems
        return json_response(200, reply)

    async def ready(request: Request) -> Response:
        why = services.board.not_ready() if services.board is not None else None
        if services.draining or why in ("draining", "quiet"):
            return json_response(503, {"status": "not_ready", "reason": why or "draining"})
        if not probe.reading().reachable:
            return json_response(503, {"status": "not_ready", "reason": "backend unreachable"})
        if why is not None:
            return json_response(503, {"status": "not_ready", "reason": why})
        return json_response(200, {"status": "ready"})

    async def get_metrics(request: Request) -> Response:
        try:
            queues = await asyncio.wait_for(services.admin.queue_samples(
                limit=services.settings.metrics_max_queues, now_ms=timefmt.now_ms(),
            ), PROBE_TIMEOUT_S)
        except BACKEND_ERRORS as err:
            logger.warning("/metrics without the queue gauges: %s", err or type(err).__name__)
            queues = []
        # Exactly text/plain: scrapers accept it and the observability conformance test asks for it.
        return Response(200, metrics.render(queues), [(b"content-type", b"text/plain")])

    if not probes_only:
        router.add("GET", "/ojs/manifest", get_manifest)
    router.add("GET", "/metrics", get_metrics)
    router.add("GET", "/ojs/v1/health", health)
    router.add("GET", "/health", health)
    router.add("GET", "/ready", ready)
