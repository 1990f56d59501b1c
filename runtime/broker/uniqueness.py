"""Unique-job fingerprints: which jobs count as "the same job" under a unique policy.

The fingerprint is SHA-256 over a canonical JSON object of the chosen dimensions (type always,
plus queue, args or selected argument keys, selected meta keys): keys sorted at every level,
compact, strings NFC-normalised, so equal jobs hash equally whatever their spelling.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from runtime import timefmt
from runtime.envelope import State
from runtime.errors import InvalidRequest

Dimension = Literal["type", "queue", "args", "meta"]
DEFAULT_STATES = ("available", "active", "scheduled", "retryable", "pending")


class UniquePolicy(msgspec.Struct, kw_only=True):
    keys: Annotated[list[Dimension], Meta(max_length=4)] = msgspec.field(default_factory=lambda: ["type"])
    key: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=64)] | None = None
    args_keys: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=64)] | None = None
    meta_keys: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=64)] | None = None
    period: Annotated[str, Meta(max_length=64)] | None = None
    states: Annotated[list[State], Meta(max_length=8)] | None = None
    on_conflict: Literal["reject", "ignore", "use_existing", "replace", "replace_except_schedule"] = "reject"


class UniqueLock(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    states: str  # comma-separated
    period_ms: int | None
    on_conflict: str  # reject | ignore | replace | replace_except_schedule


def _canonical(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {unicodedata.normalize("NFC", k): _canonical(v) for k, v in value.items()}
    return value


def _selected_args(args: list[Any], names: list[str]) -> dict[str, Any]:
    target = next((a for a in args if isinstance(a, dict)), None)
    if target is None:
        raise InvalidRequest("unique.args_keys needs an object among the args")
    missing = [name for name in names if name not in target]
    if missing:
        raise InvalidRequest(f"unique.args_keys not found in args: {', '.join(missing)}")
    return {name: target[name] for name in names}


def unique_lock(
    raw_policy: dict[str, Any], *, job_type: str, queue: str, args_json: str, meta: dict[str, Any],
    tenant: str | None = None,
) -> UniqueLock:
    try:
        policy = msgspec.convert(raw_policy, UniquePolicy)
    except msgspec.ValidationError as err:
        raise InvalidRequest(f"Invalid unique policy: {err}") from None
    dims = set(policy.keys) | {"type"}
    arg_names = policy.args_keys if policy.args_keys is not None else policy.key
    if arg_names:
        dims.add("args")
    subject: dict[str, Any] = {"type": job_type}
    if tenant is not None:  # tenants never share a lock: one cannot see or replace another's job
        subject["tenant"] = tenant
    if "queue" in dims:
        subject["queue"] = queue
    if "args" in dims:
        args = msgspec.json.decode(args_json)
        subject["args"] = _selected_args(args, arg_names) if arg_names else args
    if "meta" in dims:
        if not policy.meta_keys:
            raise InvalidRequest("unique.meta_keys is required when keys contains meta")
        subject["meta"] = {k: meta.get(k) for k in policy.meta_keys}
    digest = hashlib.sha256(msgspec.json.encode(_canonical(subject), order="sorted")).hexdigest()
    period_ms = None
    if policy.period is not None:
        try:
            period_ms = timefmt.parse_duration_ms(policy.period)
        except ValueError as err:
            raise InvalidRequest(f"Invalid unique policy: period: {err}") from None
        if period_ms < 1:
            raise InvalidRequest("Invalid unique policy: period must be at least 1 ms")
    states = [s.value for s in policy.states] if policy.states else list(DEFAULT_STATES)
    on_conflict = {"use_existing": "ignore"}.get(
        policy.on_conflict, policy.on_conflict
    )
    return UniqueLock(fingerprint=digest, states=",".join(states), period_ms=period_ms, on_conflict=on_conflict)
