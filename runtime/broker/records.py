"""An enqueue request into a job's Redis hash fields (validated); render.py goes the other way.

The hash keeps scalars the scripts need (state, attempt, deadlines as epoch ms) as plain fields,
and client JSON (args, meta, result, unknown top-level fields) as untouched JSON text, which is
spliced back verbatim when the envelope is rendered: Lua never parses client data.
"""

from __future__ import annotations

import functools
from itertools import chain
from typing import Any

import msgspec
from msgspec import Raw

from runtime import timefmt
from runtime.broker.job_versions import sort_key, version_key
from runtime.broker.rate_limits import policy_fields
from runtime.broker.tenants import checked_tenant
from runtime.broker.uniqueness import UniqueLock, unique_lock
from runtime.envelope import (
    ENVELOPE_FIELDS,
    MAX_DURATION_MS,
    NAMED_PRIORITIES,
    EnqueueOptions,
    EnqueueRequest,
    RetryPolicy,
    State,
)
from runtime.errors import EnqueueRejected, InvalidPayload, InvalidRequest, PolicyValidationError
from runtime.ids import uuid7

_encode = msgspec.json.encode
_pack = msgspec.msgpack.Encoder().encode
_retry_decoder = msgspec.json.Decoder(RetryPolicy)
_top_decoder = msgspec.json.Decoder(dict[str, Raw])
_request_decoder = msgspec.json.Decoder(EnqueueRequest)


class NewJob(msgspec.Struct, kw_only=True):
    """A validated job ready for enqueue.lua."""

    id: str
    queue: str
    state: str  # an OJS State, or "waiting" for a workflow step not enqueued yet
    priority: int
    due_ms: int | None
    expires_ms: int | None
    unique: UniqueLock | None = None
    client_id: bool = False  # the id came from the client (and may collide)
    # Values are str: the Lua msgpack decoder has no bin type, and every value is valid UTF-8
    # (JSON text that was decoded, or our own strings).
    fields: dict[str, str]
    # Set by with_identity only: the shared build's block without its id and args (see there).
    shared: SharedBlock | None = None

    def script_arg(self) -> bytes:
        """The job's block for enqueue.lua: one msgpack array of strings (see its header)."""
        if self.shared is not None and not self.client_id:
            return self.shared.block(self.id, self.fields)
        return _pack(self._flat())

    def _flat(self) -> list[str]:
        lock = self.unique
        flat: list[str] = [
            self.id,
            self.queue,
            self.state,
            str(self.priority),
            "" if self.due_ms is None else str(self.due_ms),
            "" if self.expires_ms is None else str(self.expires_ms),
            lock.fingerprint if lock else "",
            lock.states if lock else "",
            "" if lock is None or lock.period_ms is None else str(lock.period_ms),
            lock.on_conflict if lock else "",
            "1" if self.client_id else "",
        ]
        flat.extend(chain.from_iterable(self.fields.items()))
        return flat


# The fields a shared build gives each job of its own (with_identity).
IDENTITY_FIELDS = ("id", "args")


class SharedBlock:
    """A shared build's enqueue.lua block, packed once without what differs per job: the id
    that opens it and the identity fields, which go last (the script reads the field pairs in
    any order). msgpack packs an array as its length and then each element, so the pieces join
    into the same array that packing the whole list gives, reordered."""

    __slots__ = ("head", "middle", "names")

    def __init__(self, template: NewJob) -> None:
        flat = template._flat()
        self.names = [name for name in IDENTITY_FIELDS if name in template.fields]
        rest = [*flat[1:11], *chain.from_iterable((k, v) for k, v in template.fields.items() if k not in self.names)]
        self.head = _array_header(1 + len(rest) + 2 * len(self.names))
        self.middle = b"".join(map(_pack, rest))

    def block(self, job_id: str, fields: dict[str, str]) -> bytes:
        tail = _pack([x for name in self.names for x in (name, fields[name])])
        return b"".join((self.head, _pack(job_id), self.middle, tail[_array_header_size(2 * len(self.names)):]))


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 0x10000:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _array_header_size(length: int) -> int:
    return 1 if length < 16 else 3 if length < 0x10000 else 5


class EffectiveRetry(msgspec.Struct, kw_only=True, frozen=True):
    """A retry policy merged with the defaults, in the units the scripts use."""

    max_attempts: int
    display_json: str
    initial_ms: int
    coefficient: float
    max_ms: int
    jitter: bool
    strategy: str
    on_exhaustion: str
    non_retryable_errors: list[str]
    display: dict[str, Any]
    fields: dict[str, str]  # what the job hash stores of it (see retry_hash_fields)


def present(raw: Raw) -> bool:
    """An optional Raw field was given with a value (not absent, not JSON null)."""
    return len(raw) > 0 and bytes(raw).strip() != b"null"


def resolve_retry(raw: Raw) -> EffectiveRetry:
    """Decode and check a retry policy. Any problem is a 422 naming the field."""
    return _resolve_retry_text(bytes(raw) if present(raw) else b"")


@functools.lru_cache(maxsize=256)
def _resolve_retry_text(text: bytes) -> EffectiveRetry:
    # Cached: most jobs carry no policy or one of a few, and the result is immutable.
    return _resolve_policy(text, check_stored=True)


def _resolve_policy(text: bytes, *, check_stored: bool) -> EffectiveRetry:
    try:
        policy = _retry_decoder.decode(text) if text else RetryPolicy()
    except msgspec.DecodeError as err:
        raise PolicyValidationError(f"Invalid retry policy: {err}") from None
    initial_ms = _duration_field(policy.initial_interval_ms, policy.initial_interval, "initial_interval", 1_000)
    max_ms = _duration_field(policy.max_interval_ms, policy.max_interval, "max_interval", 300_000)
    if initial_ms <= 0:
        raise PolicyValidationError("Invalid retry policy: initial_interval must be greater than 0")
    if max_ms < initial_ms:
        raise PolicyValidationError("Invalid retry policy: max_interval must be >= initial_interval")
    strategy = policy.backoff_strategy or policy.backoff_type or "exponential"
    display: dict[str, Any] = {
        "max_attempts": policy.max_attempts,
        "initial_interval": policy.initial_interval or _iso_seconds(initial_ms),
        "backoff_coefficient": policy.backoff_coefficient,
        "max_interval": policy.max_interval or _iso_seconds(max_ms),
        "jitter": policy.jitter,
        "non_retryable_errors": policy.non_retryable_errors,
        "on_exhaustion": policy.on_exhaustion,
        "backoff_strategy": strategy,
    }
    scalars = {
        "max_attempts": str(policy.max_attempts),
        "r_initial_ms": str(initial_ms),
        "r_coef": repr(policy.backoff_coefficient),
        "r_max_ms": str(max_ms),
        "r_jitter": "1" if policy.jitter else "0",
        "r_strategy": strategy,
        "on_exhaustion": policy.on_exhaustion,
    }
    display_json = _encode(display).decode()
    return EffectiveRetry(
        max_attempts=policy.max_attempts,
        display_json=display_json,
        initial_ms=initial_ms,
        coefficient=policy.backoff_coefficient,
        max_ms=max_ms,
        jitter=policy.jitter,
        strategy=strategy,
        on_exhaustion=policy.on_exhaustion,
        non_retryable_errors=policy.non_retryable_errors,
        display=display,
        fields=retry_hash_fields(display, scalars, display_json if check_stored else None),
    )


# The default policy (a job that names none), as the job hash would hold it in full. A hash
# leaves out every part of it that is the default's, scalars and display alike, so that a common
# job's hash holds no retry field at all: it stays small and in Redis' compact listpack encoding
# (every field under hash-max-listpack-value, 64 bytes; a 193-byte policy in every job made each
# hash a hashtable, about four times the memory). Readers apply these defaults: render.py,
# claimed_job.py, the listings; nack.lua (its prelude's table D, see scripts.py) for a scalar.
_DEFAULT_DISPLAY: dict[str, Any] = {}
_MISSING = object()
RETRY_FIELD_DEFAULTS: dict[str, str] = {}


def retry_hash_fields(display: dict[str, Any], scalars: dict[str, str], display_json: str | None) -> dict[str, str]:
    """The hash fields of a policy: the scalars nack.lua reads and, as ``retry``, the entries of
    its display, each only where it differs from the default's (``retry_display`` gives the
    whole display back, nack.lua's table D the scalars).

    Every reader since the layout that stored only the differing display applies the scalars'
    defaults too, so a server one version behind (a rolling deploy) fails these jobs as before
    (test_job_layout_compat.py runs its nack.lua on them). The version before that read every
    scalar from the hash: README, "Upgrading", says to pass through this one's predecessor."""
    fields = {name: value for name, value in scalars.items() if RETRY_FIELD_DEFAULTS.get(name) != value}
    differs = {name: value for name, value in display.items() if _DEFAULT_DISPLAY.get(name, _MISSING) != value}
    if differs:
        part = _encode(differs).decode()
        # A policy that names a duration in both forms may show a text that is the default's
        # while its value is not: that part would not give the whole back, so it is kept whole.
        fields["retry"] = part if display_json is None or _completes(part, display_json) else display_json
    return fields


def _completes(part: str, display_json: str) -> bool:
    try:
        return _resolve_policy(part.encode(), check_stored=False).display_json == display_json
    except PolicyValidationError:
        return False


@functools.lru_cache(maxsize=256)
def retry_display(stored: bytes | None) -> bytes:
    """The full effective policy (the envelope's ``retry``) of a job hash's ``retry`` field: the
    default's when absent; a stored part is completed with the defaults. A hash written before
    only differences were stored holds the whole display, which resolves to itself."""
    if not stored:
        return DEFAULT_RETRY_DISPLAY
    try:
        return _resolve_retry_text(bytes(stored)).display_json.encode()
    except PolicyValidationError:
        return bytes(stored)  # not a policy this version takes: shown as stored, as before


def _duration_field(ms: int | None, text: str | None, name: str, default_ms: int) -> int:
    if ms is not None:
        return ms
    if text is None:
        return default_ms
    try:
        value = timefmt.parse_duration_ms(text)
    except ValueError as err:
        raise PolicyValidationError(f"Invalid retry policy: {name}: {err}") from None
    if value > MAX_DURATION_MS:
        raise PolicyValidationError(f"Invalid retry policy: {name} must be at most 100 years")
    return value


def _iso_seconds(ms: int) -> str:
    seconds = ms / 1000
    return f"PT{int(seconds)}S" if seconds == int(seconds) else f"PT{seconds}S"


def _init_defaults() -> bytes:
    # The default policy resolved while nothing is taken as default yet: all of it in fields.
    default = _resolve_retry_text(b"")
    _DEFAULT_DISPLAY.update(default.display)
    RETRY_FIELD_DEFAULTS.update({name: value for name, value in default.fields.items() if name != "retry"})
    _resolve_retry_text.cache_clear()
    return default.display_json.encode()


DEFAULT_RETRY_DISPLAY = _init_defaults()


def _when(text: str, now_ms: int, name: str) -> int:
    try:
        return timefmt.parse_when_ms(text, now_ms)
    except ValueError as err:
        raise InvalidRequest(f"{name}: {err}") from None


def _priority(value: int | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return NAMED_PRIORITIES[value.lower()]
    return value


def _visibility_ms(value: int | str | None) -> int | None:
    """The flat `visibility_timeout` is seconds (an int) or an ISO 8601 duration."""
    if value is None:
        return None
    if isinstance(value, int):
        return value * 1000
    try:
        return timefmt.parse_duration_ms(value)
    except ValueError as err:
        raise InvalidRequest(f"visibility_timeout: {err}") from None


def _check_args(args: Raw) -> str:
    data = bytes(args).strip()
    if not data.startswith(b"["):
        raise InvalidRequest("args must be a JSON array")
    return data.decode()


def build_job(
    req: EnqueueRequest,
    extras: dict[str, Raw],
    *,
    job_id: str,
    now_ms: int,
    request_id: str | None = None,
    trace_context: dict[str, str] | None = None,
    tenant: str | None = None,
) -> NewJob:
    """Validate what types cannot express and turn the request into hash fields. `tenant` is
    the request's tenant (its X-OJS-Tenant header, already checked)."""
    opts = req.options or EnqueueOptions()
    job_type, _, embedded_version = req.type.partition("@")
    version = req.version if req.version is not None else (embedded_version or None)
    args = _check_args(req.args)
    meta = dict(req.meta or {})
    if opts.metadata:
        meta.update(opts.metadata)  # openapi: options.metadata is merged into meta
    if request_id and "request_id" not in meta:
        meta["request_id"] = request_id
    if trace_context and "traceparent" not in meta:  # the request's trace headers
        meta.update(trace_context)
    tenant = _job_tenant(meta, tenant)
    if meta.get("ojs_validate") is True and args == "[]":
        # The server-side enqueue validation hook: a job that asks to be validated must carry
        # arguments to validate.
        raise EnqueueRejected("Enqueue validation failed: args must not be empty")
    retry = resolve_retry(next((r for r in (opts.retry, opts.retry_policy, req.retry) if present(r)), Raw()))
    queue = opts.queue or req.queue or "default"
    priority = _priority(opts.priority if opts.priority is not None else req.priority)

    scheduled_text = opts.scheduled_at or opts.delay_until or req.scheduled_at
    due_ms: int | None = None
    scheduled_display: str | None = None
    if scheduled_text is not None:
        due_ms = _when(scheduled_text, now_ms, "scheduled_at")
        scheduled_display = timefmt.format_ms(due_ms) if scheduled_text.startswith("+") else scheduled_text
    elif opts.delay_ms:
        due_ms = now_ms + opts.delay_ms
        scheduled_display = timefmt.format_ms(due_ms)

    expires_text = opts.expires_at or req.expires_at
    expires_ms: int | None = None
    if expires_text is not None:
        expires_ms = _when(expires_text, now_ms, "expires_at")

    if opts.pending:
        state = State.PENDING
    elif due_ms is not None and due_ms > now_ms:
        state = State.SCHEDULED
    else:
        state = State.AVAILABLE

    timeout_ms = opts.timeout_ms
    if timeout_ms is None and (opts.timeout or req.timeout):
        timeout_ms = int((opts.timeout or req.timeout or 0) * 1000)
    visibility_ms = opts.visibility_timeout_ms or _visibility_ms(opts.visibility_timeout or req.visibility_timeout)

    fields: dict[str, str] = {
        "id": job_id,
        "type": job_type,
        "queue": queue,
        "state": state.value,
        "priority": str(priority),
        "attempt": "0",
        "args": args,
        "meta": _encode(meta).decode(),
        "created_at": str(now_ms),
        **retry.fields,
    }
    if version is not None:
        fields["version"] = _encode(version).decode()  # as sent: 2 stays a number, "2.0" a string
        fields["version_order"] = sort_key(version_key(version))  # what fetch.lua routes by
    if state is State.AVAILABLE:
        fields["enqueued_at"] = str(now_ms)
    if scheduled_display is not None:
        fields["scheduled_at"] = scheduled_display
    if expires_text is not None and expires_ms is not None:
        fields["expires_at"] = timefmt.format_ms(expires_ms) if expires_text.startswith("+") else expires_text
        fields["expires_ms"] = str(expires_ms)
    if timeout_ms:
        fields["timeout_ms"] = str(timeout_ms)
    if visibility_ms:
        fields["visibility_timeout_ms"] = str(visibility_ms)
    tags = opts.tags if opts.tags is not None else req.tags
    if tags is not None:
        fields["tags"] = _encode(tags).decode()
    unique = opts.unique if opts.unique is not None else req.unique
    lock = None
    if unique is not None:
        fields["unique"] = _encode(unique).decode()
        # Two versions of a type are different jobs for uniqueness (ojs-job-versioning.md 15.5).
        kind = job_type if version is None else f"{job_type}@{version_key(version)}"
        lock = unique_lock(unique, job_type=kind, queue=queue, args_json=args, meta=meta, tenant=tenant)
        fields["unique_key"] = lock.fingerprint
        fields["unique_states"] = lock.states
    if opts.rate_limit is not None:
        fields.update(policy_fields(opts.rate_limit, queue))
        fields["rate_limit"] = _encode(opts.rate_limit).decode()
    if tenant is not None:
        fields["tenant"] = tenant
    if req.schema is not None:
        fields["schema"] = req.schema
    directive = meta.get("test_directive")
    if isinstance(directive, str) and directive in ("running", "quiet", "terminate"):
        # Conformance-suite hook (see heartbeat.lua): the heartbeat answers with this directive.
        fields["test_directive"] = directive
    if extras:
        fields["extra"] = _encode(extras).decode()
    return NewJob(
        id=job_id,
        queue=queue,
        state=state.value,
        priority=priority,
        due_ms=due_ms if state is State.SCHEDULED else None,
        expires_ms=expires_ms,
        unique=lock,
        fields=fields,
    )


def _job_tenant(meta: dict[str, Any], header: str | None) -> str | None:
    """The job's tenant: the header's, copied into meta.tenant_id, or meta.tenant_id's own. Both
    given and different is a 400 (the multi-tenancy spec, 5.3): the request names two owners,
    and picking either would file the job under a tenant its producer may not have meant."""
    given = meta.get("tenant_id")
    if header is None:
        return None if given is None else checked_tenant(given, "meta.tenant_id")
    if given is not None and given != header:
        raise InvalidRequest(
            "meta.tenant_id and the X-OJS-Tenant header name different tenants.",
            details={"meta.tenant_id": given if isinstance(given, str) else None, "header": header},
        )
    meta["tenant_id"] = header
    return header


def split_extras(top: dict[str, Raw]) -> dict[str, Raw]:
    """Unknown top-level fields of an enqueue request, kept verbatim."""
    return {k: v for k, v in top.items() if k not in ENVELOPE_FIELDS}


def job_from_body(
    body: bytes, *, now_ms: int, request_id: str | None = None, trace_context: dict[str, str] | None = None,
    tenant: str | None = None,
) -> NewJob:
    """One enqueue request body (JSON) into a validated job: 400 / 422 on bad input."""
    if not body.strip():
        raise InvalidPayload("Request body is required and must be a JSON object.")
    try:
        top = _top_decoder.decode(body)
    except msgspec.DecodeError as err:
        raise InvalidPayload(f"Request body must be a JSON object: {err}") from None
    except RecursionError:
        raise InvalidPayload("Request body is nested too deeply.") from None
    req = decode_request(body)
    job = build_job(
        req, split_extras(top), job_id=req.id or uuid7(), now_ms=now_ms, request_id=request_id,
        trace_context=trace_context, tenant=tenant,
    )
    job.client_id = req.id is not None
    return job


def decode_request(body: bytes) -> EnqueueRequest:
    """A JSON object's enqueue request: 400 when it is not a valid one."""
    try:
        return _request_decoder.decode(body)
    except msgspec.DecodeError as err:
        raise InvalidRequest(f"Invalid job: {err}") from None
    except RecursionError:
        raise InvalidPayload("Request body is nested too deeply.") from None


def shares_build(req: EnqueueRequest) -> bool:
    """Whether `build_job` reads this request's id and args only to store them as they are (the
    `id` and `args` fields): no unique lock (its fingerprint may hash the args) and no enqueue
    validation hook (it looks at the args). Then jobs of the same type, meta and options built
    at the same instant differ in those two fields only, and one build serves them all
    (:func:`with_identity`)."""
    opts = req.options or EnqueueOptions()
    if req.unique is not None or opts.unique is not None:
        return False
    return not any(meta and "ojs_validate" in meta for meta in (req.meta, opts.metadata))


def with_identity(template: NewJob, job_id: str, args_json: str) -> NewJob:
    """`template` (a job `shares_build` allowed to share) as `build_job` builds it for another
    fresh id and another args array (valid JSON text of an array). Its block for enqueue.lua is
    packed from the template's (SharedBlock): such a job is sent as it was made."""
    fields = dict(template.fields)
    if "id" in fields:
        fields["id"] = job_id
    fields["args"] = args_json
    if template.shared is None:
        template.shared = SharedBlock(template)
    return NewJob(id=job_id, queue=template.queue, state=template.state, priority=template.priority,
                  due_ms=template.due_ms, expires_ms=template.expires_ms, fields=fields, shared=template.shared)
