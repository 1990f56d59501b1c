"""The schema registry (ojs-schema-registry.md, ojs-job-versioning.md 6): JSON Schemas for the
args of a job type, one per version, stored in Redis; each change is one script that also
renews the registry's generation (see args_schemas.py for what enqueues do with it)."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.broker.args_schemas import ArgsGuard, Registration, compile_schema, latest_version
from runtime.broker.job_versions import display, precedence
from runtime.broker.keys import Keys
from runtime.broker.render import pairs_to_dict
from runtime.broker.scripts import Scripts, Status
from runtime.errors import Duplicate, NotFound
from runtime.ids import uuid7

_encode = msgspec.json.encode
_decode_registration = msgspec.json.Decoder(Registration).decode


class SchemaRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One registered schema as the API shows it."""

    job_type: str
    key: str  # the version's text
    version: int | str
    schema: msgspec.Raw
    created_at_ms: int
    compatible_with: list[int | str] | None = None


def _record(job_type: str, key: str, text: bytes) -> SchemaRecord:
    reg = _decode_registration(text)
    return SchemaRecord(job_type=job_type, key=key, version=reg.version, schema=reg.schema,
                        created_at_ms=reg.created_at, compatible_with=reg.compatible_with)


class SchemaRegistry:
    def __init__(self, scripts: Scripts, keys: Keys, redis: Any, guard: ArgsGuard) -> None:
        self.scripts = scripts
        self.keys = keys
        self.redis = redis
        self.guard = guard

    async def register(
        self, job_type: str, key: str, document: Any, *, now_ms: int,
        compatible_with: list[int | str] | None = None,
    ) -> SchemaRecord:
        """Store a new version's schema: InvalidSchema (422) when the document is no JSON
        Schema, Duplicate (409) when the version is registered already."""
        compile_schema(document)
        registration = Registration(version=display(key), schema=msgspec.Raw(_encode(document)),
                                    created_at=now_ms, compatible_with=compatible_with)
        text = _encode(registration)
        reply = await self.scripts.call(
            "schema_put", keys=[self.keys.prefix], args=[job_type, key, text, uuid7()],
        )
        if int(reply[0]) == Status.DUPLICATE_ID:
            raise Duplicate(
                f"A schema for {job_type} version {key} is registered already; register a new version.",
                details={"job_type": job_type, "version": display(key)},
            )
        return _record(job_type, key, text)

    async def delete(self, job_type: str, key: str) -> None:
        reply = await self.scripts.call("schema_delete", keys=[self.keys.prefix], args=[job_type, key, uuid7()])
        if int(reply[0]) == Status.NOT_FOUND:
            raise NotFound(f"No schema for {job_type} version {key}.")

    async def versions(self, job_type: str) -> list[SchemaRecord]:
        """Every registered version of the type, newest first (by version precedence)."""
        stored: dict[bytes, bytes] = await self.redis.hgetall(self.keys.schema(job_type))
        records = [_record(job_type, k.decode(), v) for k, v in stored.items()]
        return sorted(records, key=lambda r: (precedence(r.key), r.key), reverse=True)

    async def get(self, job_type: str, key: str) -> SchemaRecord:
        text = await self.redis.hget(self.keys.schema(job_type), key)
        if text is None:
            raise NotFound(f"No schema for {job_type} version {key}.")
        return _record(job_type, key, text)

    async def latest(self, job_type: str) -> tuple[SchemaRecord, list[SchemaRecord]]:
        """The latest version and all of them, newest first; NotFound when there is none."""
        records = await self.versions(job_type)
        if not records:
            raise NotFound(f"No schema is registered for job type {job_type}.")
        return records[0], records

    async def stored_generation(self) -> str:
        value = await self.redis.get(self.keys.schemas_gen)
        return value.decode() if value is not None else ""

    async def refresh_guard(self, generation: str) -> None:
        """Bring the enqueue guard to the stored registry (enqueue.lua reported `generation`)."""
        if generation == "":
            self.guard.forget("")  # nothing was ever registered, or the store was emptied
            return
        reply = await self.scripts.call("schema_snapshot", keys=[self.keys.prefix], args=[])
        it = iter(reply[1:])
        registry = {t.decode(): {k.decode(): v for k, v in pairs_to_dict(flat).items()} for t, flat in zip(it, it, strict=False)}
        self.guard.replace(reply[0].decode(), registry)


__all__ = ["SchemaRecord", "SchemaRegistry", "latest_version"]
