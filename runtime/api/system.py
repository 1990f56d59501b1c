"""Manifest, health and readiness."""

from __future__ import annotations

from typing import Any

import prometheus_client

from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker import BACKEND_ERRORS

IMPLEMENTATION_VERSION = "0.1.0"
CONFORMANCE_LEVEL = 4


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
            "job_ttl": True, "priority_queues": True, "rate_limiting": True, "schema_validation": False,
            "unique_jobs": {"strength": "strong", "mechanism": "atomic check-and-insert in one Lua script"},
            "workflows": True, "pause_resume": True,
        },
        "extensions": {"events": {"transport": ["http-polling"]}},
        "endpoints": {"base": "/ojs/v1", "manifest": "/ojs/manifest", "health": "/ojs/v1/health"},
    }


def register(router: Router, services: Services) -> None:
    broker = services.broker
    body = manifest()

    async def get_manifest(request: Request) -> Response:
        return json_response(200, body)

    async def health(request: Request) -> Response:
        try:
            latency = await broker.ping_ms()
        except BACKEND_ERRORS as err:
            return json_response(503, {
                "status": "degraded", "version": "1.0", "uptime_seconds": services.uptime_s,
                "backend": {"type": "redis", "status": "unhealthy", "error": str(err)},
            })
        return json_response(200, {
            "status": "ok", "version": "1.0", "uptime_seconds": services.uptime_s,
            "backend": {"type": "redis", "status": "ok", "latency_ms": round(latency, 3)},
        })

    async def ready(request: Request) -> Response:
        if services.draining:
            return json_response(503, {"status": "not_ready", "reason": "draining"})
        try:
            await broker.ping_ms()
        except BACKEND_ERRORS:
            return json_response(503, {"status": "not_ready", "reason": "backend unreachable"})
        return json_response(200, {"status": "ready"})

    async def metrics(request: Request) -> Response:
        # Exactly text/plain: scrapers accept it and the observability conformance test asks for it.
        return Response(200, prometheus_client.generate_latest(), [(b"content-type", b"text/plain")])

    router.add("GET", "/ojs/manifest", get_manifest)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/ojs/v1/health", health)
    router.add("GET", "/health", health)
    router.add("GET", "/ready", ready)
