"""Checking jobs' args against the schema registry at enqueue, at no cost for types without one.

Each process keeps a snapshot of the registry: the registrations of every type, tagged with
the registry's generation (a token the registry replaces at every change). An enqueue checks
its jobs against the snapshot and hands the snapshot's generation to enqueue.lua, which
compares it with the stored one in the same atomic step that inserts the jobs (one GET inside
the script, no round trip of its own). When they differ, another process registered or removed
a schema since: nothing is written, the snapshot is read again (one round trip, only then) and
the jobs are checked again. So an enqueue is checked against the registry as it is when the job
is inserted, and the steady state costs a dictionary lookup per job.

Compiled validators are kept per (type, version) and reused across snapshots while that
registration's text is unchanged; a removed or changed registration drops its validator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.broker.job_versions import precedence, version_key
from runtime.broker.records import NewJob
from runtime.errors import ArgsSchemaMismatch, InvalidSchema

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# jsonschema is imported where a schema is first compiled, not with the broker: a server whose
# registry stays empty never loads it.

# Before the first snapshot: a generation no registry has, so the first enqueue learns the
# stored one from enqueue.lua's refusal (and reads the registry only when it is not empty).
UNKNOWN_GENERATION = "?"
MAX_REPORTED_ERRORS = 10

_json = msgspec.json.Decoder()


class Registration(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One stored registration (the value in ``schema:<type>``)."""

    version: int | str
    schema: msgspec.Raw
    created_at: int  # ms
    compatible_with: list[int | str] | None = None


_decode_registration = msgspec.json.Decoder(Registration).decode


def compile_schema(document: Any) -> Validator:
    """A validator for a registered schema document, or InvalidSchema (422) naming the problem.

    The dialect is the one `$schema` names; without `$schema`, draft 2020-12 (the registry's
    format), unless the document is valid only in draft 2019-09 (its array form of `items`, which
    2020-12 renamed `prefixItems`): it is read in the dialect it was written for."""
    import jsonschema

    if not isinstance(document, dict | bool):
        raise InvalidSchema("schema must be a JSON Schema document (an object or a boolean).")
    dialect = document.get("$schema") if isinstance(document, dict) else None
    if dialect is not None and not isinstance(dialect, str):
        raise InvalidSchema("schema: $schema must be the URI of a JSON Schema dialect.")
    cls: Any = jsonschema.validators.validator_for(document, default=None) if dialect is not None else None
    if dialect is not None and cls is None:
        raise InvalidSchema(f"schema: unknown $schema dialect {dialect!r}.")
    candidates = [cls] if cls is not None else [jsonschema.Draft202012Validator, jsonschema.Draft201909Validator]
    first_error: Any = None
    for candidate in candidates:
        try:
            candidate.check_schema(document)
        except jsonschema.SchemaError as err:
            first_error = first_error or err
            continue
        except RecursionError:
            raise InvalidSchema("schema is nested too deeply.") from None
        validator: Validator = candidate(document, format_checker=candidate.FORMAT_CHECKER)
        return validator
    assert first_error is not None
    where = first_error.json_path.replace("$", "schema", 1)
    raise InvalidSchema(f"{where}: {first_error.message}", details={"path": where})


class _Entry(msgspec.Struct):
    text: bytes  # the stored registration, to tell a changed one from the same
    registration: Registration
    validator: Any = None  # a jsonschema Validator, compiled on first use


class _TypeSchemas(msgspec.Struct):
    by_version: dict[str, _Entry]
    latest: str  # the version key an unversioned job is checked against


class ArgsGuard:
    """The snapshot of the registry one broker checks enqueues against."""

    def __init__(self) -> None:
        self.generation = UNKNOWN_GENERATION
        self._types: dict[str, _TypeSchemas] = {}

    def check(self, jobs: Sequence[NewJob]) -> str:
        """Check every job that has a schema; returns the generation checked against.
        ArgsSchemaMismatch (422) for the first job that does not match, prefixed `jobs[i]:` in a
        batch."""
        if not self._types:
            return self.generation
        for index, job in enumerate(jobs):
            schemas = self._types.get(job.fields["type"])
            if schemas is None:
                continue
            raw_version = job.fields.get("version")
            key = schemas.latest if raw_version is None else version_key(_json.decode(raw_version))
            entry = schemas.by_version.get(key)
            if entry is None:
                continue  # a version nobody registered a schema for: nothing to check against
            try:
                self._check_one(job, key, entry)
            except ArgsSchemaMismatch as err:
                if len(jobs) > 1:
                    err.message = f"jobs[{index}]: {err.message}"
                    if err.details is not None:
                        err.details["index"] = index
                raise
        return self.generation

    def _check_one(self, job: NewJob, key: str, entry: _Entry) -> None:
        job_type = job.fields["type"]
        if entry.validator is None:
            entry.validator = compile_schema(_json.decode(entry.registration.schema))
        from referencing.exceptions import Unresolvable

        try:
            args = _json.decode(job.fields["args"])
        except msgspec.MsgspecError as err:  # valid JSON that Python cannot hold (1e400)
            raise ArgsSchemaMismatch(
                f"The args of this {job_type} job cannot be checked against its schema: {err}",
                details={"job_type": job_type, "version": entry.registration.version},
            ) from None
        try:
            errors = sorted(entry.validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
        except (Unresolvable, re.error, RecursionError) as err:
            raise ArgsSchemaMismatch(
                f"The schema for {job_type}@{key} cannot be evaluated: {err}",
                details={"job_type": job_type, "version": entry.registration.version},
            ) from None
        if not errors:
            return
        reported = [(e.json_path.replace("$", "args", 1), e.message) for e in errors[:MAX_REPORTED_ERRORS]]
        path, message = reported[0]
        raise ArgsSchemaMismatch(
            f"Job arguments do not match schema for {job_type}@{key}: {path}: {message}",
            details={
                "job_type": job_type,
                "version": entry.registration.version,
                "path": path,
                "validation_errors": [f"{p}: {m}" for p, m in reported],
                "errors": [{"path": p, "message": m} for p, m in reported],
            },
        )

    def forget(self, generation: str) -> None:
        """The registry is empty at this generation (no snapshot needed)."""
        self.generation = generation
        self._types = {}

    def replace(self, generation: str, registry: dict[str, dict[str, bytes]]) -> None:
        """Take a new snapshot, type -> version key -> registration text; validators of
        unchanged registrations are kept."""
        types: dict[str, _TypeSchemas] = {}
        for job_type, versions in registry.items():
            old = self._types.get(job_type)
            by_version: dict[str, _Entry] = {}
            for key, text in versions.items():
                kept = old.by_version.get(key) if old is not None else None
                if kept is not None and kept.text == text:
                    by_version[key] = kept
                else:
                    by_version[key] = _Entry(text, _decode_registration(text))
            if by_version:
                types[job_type] = _TypeSchemas(by_version, latest=latest_version(by_version))
        self.generation = generation
        self._types = types


def latest_version(keys: Any) -> str:
    """The highest version key by precedence (ties: the longer spelling, 2.0.0 over 2)."""
    latest: str = max(keys, key=lambda k: (precedence(k), k))
    return latest
