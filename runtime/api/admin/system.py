"""Admin statistics, maintenance mode, configuration view, the caller's access, cron trigger,
and the list routes the admin UIs call (crons, workflows)."""

from __future__ import annotations

import msgspec

from runtime import timefmt
from runtime.api.admin.common import MAX_PER_PAGE, page_args, pagination, time_ms
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.errors import InvalidRequest

_WORKFLOW_STATES = ("running", "completed", "failed", "cancelled")
# Never shown: credentials, and where the TLS files lie (the private key's path above all).
_SECRET_SETTINGS = frozenset({"api_key", "api_read_keys", "redis_url", "redis_tls_ca", "redis_tls_cert", "redis_tls_key"})


class MaintenanceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool
    reason: str | None = None
    estimated_duration: str | None = None


_maintenance_decoder = msgspec.json.Decoder(MaintenanceRequest)


class _WorkflowCursor(msgspec.Struct, array_like=True):
    score: float
    id: str


_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(_WorkflowCursor)


def register(router: Router, services: Services) -> None:
    admin = services.admin
    history = services.history

    async def stats(request: Request) -> Response:
        """Totals over every queue (their counters) and the rates of the last minutes."""
        names = await admin.queue_names()
        rates = await history.per_minute()
        views = await admin.queue_views(names, rates) if names else []
        jobs: dict[str, int] = {}
        for view in views:
            for state, n in view["counts"].items():
                jobs[state] = jobs.get(state, 0) + n
        if not jobs:
            jobs = dict.fromkeys(("available", "active", "scheduled", "retryable", "pending", "completed",
                                  "discarded", "cancelled"), 0)
        workers = await services.broker.redis.zcard(services.broker.keys.workers)
        return json_response(200, {
            "queues": len(names), "workers": workers, "jobs": jobs, "throughput": rates["*"],
            "uptime_seconds": services.uptime_s, "maintenance": (await admin.maintenance())["maintenance"],
        })

    async def stats_history(request: Request) -> Response:
        """One point per period (1m, 5m, 15m, 1h, 1d), at most 1,500, from the per-minute and
        per-hour counts. Cost: one HGETALL per minute or hour covered, pipelined."""
        queue = request.query("queue") or None
        body = await history.series(
            period=request.query("period") or "1m", since_ms=time_ms(request.query("since"), "since"),
            until_ms=time_ms(request.query("until"), "until"), queue=queue,
        )
        return json_response(200, body)

    async def get_maintenance(request: Request) -> Response:
        return json_response(200, await admin.maintenance())

    async def set_maintenance(request: Request) -> Response:
        req: MaintenanceRequest = request.decode(_maintenance_decoder)
        if req.reason is not None and len(req.reason) > 1_000:
            raise InvalidRequest("reason is at most 1,000 characters.")
        return json_response(200, await admin.set_maintenance(req.enabled, req.reason))

    async def config(request: Request) -> Response:
        settings = msgspec.to_builtins(services.settings)
        shown = {k: v for k, v in settings.items() if k not in _SECRET_SETTINGS}
        shown["auth"] = {"api_key": services.settings.api_key is not None,
                         "read_only_keys": len(services.settings.api_read_keys)}
        shown["redis"] = "embedded" if services.settings.redis_url is None else "external"
        return json_response(200, {"config": shown})

    async def auth(request: Request) -> Response:
        scopes = ["ojs:admin:read", "ojs:data:read"]
        if not request.read_only:
            scopes += ["ojs:admin:write", "ojs:admin:purge", "ojs:data:write"]
        return json_response(200, {"read_only": request.read_only, "scopes": scopes,
                                   "auth_required": services.settings.api_key is not None})

    async def trigger_cron(request: Request) -> Response:
        job_id = await services.crons.trigger(request.params["name"])
        return json_response(200, {"name": request.params["name"], "job_id": job_id,
                                   "triggered_at": timefmt.format_ms(timefmt.now_ms())})

    async def list_crons(request: Request) -> Response:
        page, per_page = page_args(request, default=MAX_PER_PAGE)
        views, total = await services.crons.list((page - 1) * per_page, per_page)
        return json_response(200, {"crons": views, "cron_jobs": views, "items": views, "count": len(views),
                                   "pagination": pagination(total, page, per_page)})

    async def list_workflows(request: Request) -> Response:
        """Newest first, optionally one state; see Workflows.list for the bounded cost."""
        state = request.query("state") or None
        if state is not None and state not in _WORKFLOW_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(_WORKFLOW_STATES)}.")
        _, limit = page_args(request)
        after = None
        if raw := request.query("cursor"):
            try:
                c = _cursor_decoder.decode(raw)
            except msgspec.DecodeError:
                raise InvalidRequest("Query parameter 'cursor' must be a cursor returned by this endpoint.") from None
            after = (c.score, c.id)
        items, next_at = await services.workflows.list(state=state, limit=limit, after=after)
        cursor = _cursor_encoder.encode(_WorkflowCursor(*next_at)).decode() if next_at else None
        return json_response(200, {"items": items, "workflows": items,
                                   "pagination": {"per_page": limit, "next_cursor": cursor, "has_more": cursor is not None}})

    router.add("GET", "/ojs/v1/admin/stats", stats)
    router.add("GET", "/ojs/v1/admin/stats/history", stats_history)
    router.add("GET", "/ojs/v1/admin/system/maintenance", get_maintenance)
    router.add("POST", "/ojs/v1/admin/system/maintenance", set_maintenance)
    router.add("GET", "/ojs/v1/admin/system/config", config)
    router.add("GET", "/ojs/v1/admin/auth", auth)
    router.add("POST", "/ojs/v1/admin/crons/{name}/trigger", trigger_cron)
    router.add("GET", "/ojs/v1/crons", list_crons)
    router.add("GET", "/ojs/v1/workflows", list_workflows)
