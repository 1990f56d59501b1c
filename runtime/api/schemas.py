"""Schema registry endpoints, in both spellings the specs give:

- ojs-schema-registry.md: ``POST /ojs/v1/schemas``, ``GET /ojs/v1/schemas/{type}`` (latest),
  ``GET .../{type}/versions``, ``GET`` and ``DELETE .../{type}/{version}``; a schema answers
  wrapped, ``{"schema": {"job_type", "version", "schema", "created_at"}}``.
- ojs-job-versioning.md 11 (and its conformance suites): ``PUT /ojs/v1/admin/schemas/{type}/
  {version}``, ``GET .../{type}`` (the latest, and the list of versions beside it),
  ``GET .../{type}/versions``, ``GET`` and ``DELETE .../{type}/{version}``; a schema answers
  flat, ``{"type", "version", "schema", "created_at"}``.

Both are the one registry; a version is registered once (409 for a second registration).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from runtime import timefmt
from runtime.api.routing import Request, Response, Router, json_response
from runtime.api.services import Services
from runtime.broker.job_versions import display, version_key
from runtime.broker.records import present
from runtime.broker.schema_registry import SchemaRecord
from runtime.envelope import TYPE_PATTERN, VERSION_PATTERN, SchemaPost, SchemaPut
from runtime.errors import InvalidRequest

_put_decoder = msgspec.json.Decoder(SchemaPut)
_post_decoder = msgspec.json.Decoder(SchemaPost)
_document = msgspec.json.Decoder()
_type_re = re.compile(TYPE_PATTERN)
_version_re = re.compile(VERSION_PATTERN)


def _flat(record: SchemaRecord) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": record.job_type, "job_type": record.job_type, "version": record.version,
        "schema": record.schema, "created_at": timefmt.format_ms(record.created_at_ms),
    }
    if record.compatible_with is not None:
        view["compatible_with"] = record.compatible_with
    return view


def _wrapped(record: SchemaRecord) -> dict[str, Any]:
    view = _flat(record)
    return {"schema": view, **{k: v for k, v in view.items() if k != "schema"}}


def _version_list(records: list[SchemaRecord]) -> list[dict[str, Any]]:
    return [
        {"version": r.version, "created_at": timefmt.format_ms(r.created_at_ms), "is_latest": i == 0}
        for i, r in enumerate(records)
    ]


def _checked_type(job_type: str) -> str:
    if len(job_type) > 255 or not _type_re.match(job_type):
        raise InvalidRequest(f"Invalid job type {job_type!r}: it must match {TYPE_PATTERN}.")
    return job_type


def _checked_version(version: str) -> str:
    if not _version_re.match(version):
        raise InvalidRequest(f"Invalid version {version!r}: it must match {VERSION_PATTERN}.")
    return version


def _schema_document(raw: msgspec.Raw) -> Any:
    if not present(raw):
        raise InvalidRequest("schema is required: the JSON Schema the job type's args must match.")
    try:
        return _document.decode(bytes(raw))
    except msgspec.MsgspecError as err:  # valid JSON that Python cannot hold (1e400)
        raise InvalidRequest(f"schema: {err}") from None


def register(router: Router, services: Services) -> None:
    registry = services.broker.schemas

    async def put_admin(request: Request) -> Response:
        job_type = _checked_type(request.params["type"])
        key = _checked_version(request.params["version"])
        body: SchemaPut = request.decode(_put_decoder)
        if body.type is not None and body.type != job_type:
            raise InvalidRequest(f"type {body.type!r} differs from the path's {job_type!r}.")
        if body.version is not None and version_key(body.version) != key:
            raise InvalidRequest(f"version {body.version!r} differs from the path's {display(key)!r}.")
        document = _schema_document(body.schema if present(body.schema) else body.args_schema)
        record = await registry.register(job_type, key, document, now_ms=timefmt.now_ms(),
                                         compatible_with=body.compatible_with)
        return json_response(201, _flat(record))

    async def post(request: Request) -> Response:
        body: SchemaPost = request.decode(_post_decoder)
        job_type = body.job_type or body.type
        if job_type is None:
            raise InvalidRequest("job_type is required.")
        if body.version is None:
            raise InvalidRequest("version is required.")
        key = _checked_version(version_key(body.version))
        record = await registry.register(job_type, key, _schema_document(body.schema), now_ms=timefmt.now_ms(),
                                         compatible_with=body.compatible_with)
        return json_response(201, _wrapped(record))

    async def latest_admin(request: Request) -> Response:
        latest, records = await registry.latest(request.params["type"])
        return json_response(200, {**_flat(latest), "versions": _version_list(records)})

    async def latest(request: Request) -> Response:
        record, _ = await registry.latest(request.params["type"])
        return json_response(200, _wrapped(record))

    async def versions(request: Request) -> Response:
        job_type = request.params["type"]
        records = await registry.versions(job_type)
        return json_response(200, {"type": job_type, "job_type": job_type, "versions": _version_list(records)})

    async def one_admin(request: Request) -> Response:
        return json_response(200, _flat(await registry.get(request.params["type"], request.params["version"])))

    async def one(request: Request) -> Response:
        return json_response(200, _wrapped(await registry.get(request.params["type"], request.params["version"])))

    async def delete(request: Request) -> Response:
        job_type, key = request.params["type"], request.params["version"]
        await registry.delete(job_type, key)
        return json_response(200, {"deleted": True, "type": job_type, "job_type": job_type, "version": display(key)})

    for base, show_latest, show_one in (
        ("/ojs/v1/admin/schemas", latest_admin, one_admin), ("/ojs/v1/schemas", latest, one),
    ):
        router.add("GET", base + "/{type}/versions", versions)
        router.add("GET", base + "/{type}", show_latest)
        router.add("GET", base + "/{type}/{version}", show_one)
        router.add("DELETE", base + "/{type}/{version}", delete)
    router.add("PUT", "/ojs/v1/admin/schemas/{type}/{version}", put_admin)
    router.add("POST", "/ojs/v1/schemas", post)
