"""Cron endpoints. Responses carry both the openapi (`cron`, `crons`) and prose (`cron_job`,
`cron_jobs`) spellings; each registration has both shapes too (see Crons._view)."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.api.queues import MAX_OFFSET
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.envelope import CRON_FIELDS, CronPatch, CronRequest

_register_decoder = msgspec.json.Decoder(CronRequest)
_fields_decoder = msgspec.json.Decoder(dict[str, Any])
_patch_decoder = msgspec.json.Decoder(CronPatch)


def register(router: Router, services: Services) -> None:
    crons = services.crons
    max_page = services.settings.max_page_size

    async def create(request: Request) -> Response:
        req: CronRequest = request.decode(_register_decoder)
        top: dict[str, Any] = request.decode(_fields_decoder)
        view, created = await crons.register(req, {k: v for k, v in top.items() if k not in CRON_FIELDS})
        return json_response(201 if created else 200, {"cron": view, "cron_job": view})

    async def list_crons(request: Request) -> Response:
        # Without a limit, the largest page: all of them, up to max_page_size (has_more says so)
        limit = request.query_int("limit", default=max_page, minimum=1, maximum=max_page)
        offset = request.query_int("offset", default=0, minimum=0, maximum=MAX_OFFSET)
        page, total = await crons.list(offset, limit)
        pagination = {"total": total, "limit": limit, "offset": offset, "has_more": offset + limit < total}
        return json_response(200, {
            "crons": page, "cron_jobs": page, "count": len(page), "pagination": pagination,
        })

    async def get(request: Request) -> Response:
        view = await crons.get(request.params["name"])
        return json_response(200, {"cron": view, "cron_job": view})

    async def delete(request: Request) -> Response:
        view = await crons.delete(request.params["name"])
        return json_response(200, {"cron": view, "cron_job": view, "deleted": True, "name": view["name"]})

    async def patch(request: Request) -> Response:
        req: CronPatch = request.decode(_patch_decoder)
        name = request.params["name"]
        view = await crons.get(name) if req.enabled is None else await crons.set_enabled(name, req.enabled)
        return json_response(200, {"cron": view, "cron_job": view})

    router.add("POST", "/ojs/v1/cron", create)
    router.add("GET", "/ojs/v1/cron", list_crons)
    router.add("GET", "/ojs/v1/cron/{name}", get)
    router.add("DELETE", "/ojs/v1/cron/{name}", delete)
    router.add("PATCH", "/ojs/v1/cron/{name}", patch)
    # The plural form the admin UIs call (the list is in runtime/api/admin/system.py).
    router.add("GET", "/ojs/v1/crons/{name}", get)
    router.add("DELETE", "/ojs/v1/crons/{name}", delete)
    router.add("PATCH", "/ojs/v1/crons/{name}", patch)
