"""Every OJS wire object the broker reads, as msgspec Structs, with the spec's exact field names.

Validation that a type can express (patterns, ranges, required fields) lives here, so a bad
request fails while it is decoded, with a message that names the field.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw

from runtime import timefmt

TYPE_PATTERN = r"^[a-z][a-z0-9_\-]*(\.[a-z][a-z0-9_\-]*)*$"
QUEUE_PATTERN = r"^[a-z0-9][a-z0-9\-\.]*$"
UUID7_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
# A job version (the job-versioning extension): "2", "2.0", "2.0.0", "2.0.0-rc.1"... It starts
# with a digit, so no version can be mistaken for the path word "versions".
VERSION_PATTERN = r"^[0-9][0-9A-Za-z.+\-]{0,63}$"
# An enqueue request's type may carry its version after an `@` (ojs-job-versioning.md 5.3).
VERSIONED_TYPE_PATTERN = TYPE_PATTERN.removesuffix("$") + "(@" + VERSION_PATTERN.removeprefix("^")[:-1] + ")?$"

JobType = Annotated[str, Meta(pattern=TYPE_PATTERN, max_length=255)]
QueueName = Annotated[str, Meta(pattern=QUEUE_PATTERN, max_length=128)]
JobId = Annotated[str, Meta(pattern=UUID7_PATTERN)]
VersionText = Annotated[str, Meta(pattern=VERSION_PATTERN)]
JobVersion = Annotated[int, Meta(ge=0, le=2**53)] | VersionText
WorkerId = Annotated[str, Meta(min_length=1, max_length=256)]
Priority = Annotated[int, Meta(ge=-100, le=100)]
NamedPriority = Literal["HIGH", "NORMAL", "LOW", "high", "normal", "low"]
# Durations are bounded so that now + duration stays a representable timestamp.
MAX_DURATION_MS = 100 * 365 * 86_400_000
PositiveMs = Annotated[int, Meta(gt=0, le=MAX_DURATION_MS)]
IntervalMs = Annotated[int, Meta(ge=1, le=MAX_DURATION_MS)]

NAMED_PRIORITIES = {"high": 10, "normal": 0, "low": -10}


class State(enum.StrEnum):
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    PENDING = "pending"
    ACTIVE = "active"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"


TERMINAL_STATES = frozenset({State.COMPLETED, State.CANCELLED, State.DISCARDED})
ALL_STATES = tuple(State)


class RetryPolicy(msgspec.Struct, kw_only=True):
    """OJS retry policy; partial policies are merged with these defaults."""

    max_attempts: Annotated[int, Meta(ge=0, le=1_000_000)] = 3
    initial_interval: str | None = None
    initial_interval_ms: IntervalMs | None = None
    backoff_coefficient: Annotated[float, Meta(ge=1.0, le=1_000.0)] = 2.0
    max_interval: str | None = None
    max_interval_ms: IntervalMs | None = None
    jitter: bool = True
    non_retryable_errors: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=100)] = []
    on_exhaustion: Literal["discard", "dead_letter"] = "discard"
    backoff_strategy: Literal["exponential", "linear", "constant", "none", "polynomial"] | None = None
    backoff_type: Literal["exponential", "linear", "constant", "none", "polynomial"] | None = None


class EnqueueOptions(msgspec.Struct, kw_only=True):
    queue: QueueName | None = None
    priority: Priority | NamedPriority | None = None
    timeout_ms: PositiveMs | None = None
    timeout: Annotated[float, Meta(gt=0, le=MAX_DURATION_MS / 1000)] | None = None  # seconds
    scheduled_at: str | None = None
    delay_until: str | None = None
    delay_ms: Annotated[int, Meta(ge=0, le=MAX_DURATION_MS)] | None = None
    expires_at: str | None = None
    # Decoded on their own: an invalid policy is a 422, not a 400. An empty Raw means absent
    # (msgspec cannot put Raw in a union with None).
    retry: Raw = Raw()
    retry_policy: Raw = Raw()
    unique: dict[str, Any] | None = None
    tags: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=100)] | None = None
    visibility_timeout_ms: PositiveMs | None = None
    visibility_timeout: PositiveMs | str | None = None  # seconds, or an ISO 8601 duration
    metadata: dict[str, Any] | None = None
    rate_limit: dict[str, Any] | None = None
    pending: bool = False


class EnqueueRequest(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/jobs. Flat wire-format fields are accepted; options win when both are set."""

    type: Annotated[str, Meta(pattern=VERSIONED_TYPE_PATTERN, max_length=255 + 65)]
    args: Raw
    version: JobVersion | None = None  # wins over a version given in `type` after an `@`
    id: JobId | None = None
    meta: dict[str, Any] | None = None
    schema: Annotated[str, Meta(max_length=2048)] | None = None
    specversion: str | None = None
    options: EnqueueOptions | None = None
    queue: QueueName | None = None
    priority: Priority | NamedPriority | None = None
    scheduled_at: str | None = None
    expires_at: str | None = None
    retry: Raw = Raw()
    unique: dict[str, Any] | None = None
    tags: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=100)] | None = None
    timeout: Annotated[float, Meta(gt=0, le=MAX_DURATION_MS / 1000)] | None = None
    visibility_timeout: PositiveMs | str | None = None


# Top-level names the envelope owns. Any other top-level field of an enqueue request is kept
# verbatim and echoed; the system-managed ones a client may send are ignored.
ENVELOPE_FIELDS = frozenset(EnqueueRequest.__struct_fields__) | {
    "state", "attempt", "max_attempts", "created_at", "enqueued_at", "started_at", "completed_at",
    "cancelled_at", "discarded_at", "error", "errors", "result", "retry_delay_ms",
    "next_attempt_at", "next_retry_at", "worker_id", "previous_state", "progress", "parent_results",
    "workflow_id", "timeout_ms", "visibility_timeout_ms", "expired_at", "re_enqueued_at",
}


class BatchRequest(msgspec.Struct, kw_only=True):
    jobs: list[Raw]


class HandlerVersions(msgspec.Struct, kw_only=True):
    """A worker's declaration for one job type (ojs-job-versioning.md 8.1)."""

    type: JobType
    versions: Annotated[str, Meta(max_length=256)] = "*"


class FetchRequest(msgspec.Struct, kw_only=True):
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=100)]
    count: Annotated[int, Meta(ge=1)] = 1
    worker_id: WorkerId | None = None
    visibility_timeout_ms: PositiveMs | None = None
    # The versions this worker takes, per job type: `versions` as a map, or the spec's
    # `handlers` list; a type left out takes every version.
    versions: Annotated[dict[JobType, Annotated[str, Meta(max_length=256)]], Meta(max_length=100)] | None = None
    handlers: Annotated[list[HandlerVersions], Meta(max_length=100)] | None = None


class AckRequest(msgspec.Struct, kw_only=True):
    job_id: Annotated[str, Meta(min_length=1, max_length=64)]
    result: Raw = Raw()
    worker_id: WorkerId | None = None
    attempt: Annotated[int, Meta(ge=1)] | None = None


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    message: Annotated[str, Meta(max_length=10_000)] = ""
    code: Annotated[str, Meta(max_length=256)] | None = None
    type: Annotated[str, Meta(max_length=256)] | None = None
    retryable: bool | None = None
    details: dict[str, Any] | None = None
    backtrace: list[str] | str | None = None
    response_code: str | None = None
    # Dynamic rate limiting: the downstream's limit holds until then (RFC 3339); the job's
    # rate-limit key takes no new starts before it.
    rate_limit_until: Annotated[str, Meta(max_length=64)] | None = None

    def __post_init__(self) -> None:
        if self.rate_limit_until is not None:
            try:
                timefmt.parse_timestamp_ms(self.rate_limit_until)
            except ValueError as err:
                raise ValueError(f"rate_limit_until must be an RFC 3339 timestamp: {err}") from None


# An error given as a plain string (`"error": "connection timeout"`) is its message.
ErrorMessage = Annotated[str, Meta(max_length=10_000)]


def error_info(error: ErrorInfo | str | None) -> ErrorInfo | None:
    return ErrorInfo(message=error) if isinstance(error, str) else error


class NackRequest(msgspec.Struct, kw_only=True):
    job_id: Annotated[str, Meta(min_length=1, max_length=64)]
    error: ErrorInfo | ErrorMessage | None = None
    requeue: bool = False
    worker_id: WorkerId | None = None
    attempt: Annotated[int, Meta(ge=1)] | None = None


class JobAckRequest(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/jobs/{id}/ack: an AckRequest whose job is named by the path."""

    job_id: Annotated[str, Meta(max_length=64)] | None = None
    result: Raw = Raw()
    worker_id: WorkerId | None = None
    attempt: Annotated[int, Meta(ge=1)] | None = None


class JobNackRequest(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/jobs/{id}/nack: a NackRequest whose job is named by the path."""

    job_id: Annotated[str, Meta(max_length=64)] | None = None
    error: ErrorInfo | ErrorMessage | None = None
    requeue: bool = False
    worker_id: WorkerId | None = None
    attempt: Annotated[int, Meta(ge=1)] | None = None


class HeartbeatRequest(msgspec.Struct, kw_only=True):
    worker_id: WorkerId
    active_jobs: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=10_000)] | int | None = None
    active_job_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=10_000)] | None = None
    job_id: Annotated[str, Meta(max_length=64)] | None = None
    state: Annotated[str, Meta(max_length=32)] | None = None
    shutdown: bool | None = None
    visibility_timeout_ms: PositiveMs | None = None
    heartbeat_interval_ms: PositiveMs | None = None  # how often this worker beats (dead-worker detection)
    hostname: Annotated[str, Meta(max_length=256)] | None = None
    pid: int | None = None
    queues: list[str] | None = None
    concurrency: int | None = None


_checkpoint_decoder = msgspec.json.Decoder()


def decode_checkpoint(text: bytes) -> Any:
    """A stored checkpoint as a pool hands it to the handler (``ctx.last_checkpoint``). The
    progress endpoint stores only what this decodes, so a checkpoint cannot fail a later claim
    (valid JSON can still be out of range: ``[1e400]``). Raises msgspec.MsgspecError."""
    return _checkpoint_decoder.decode(text)


class ProgressRequest(msgspec.Struct, kw_only=True):
    """PUT /ojs/v1/jobs/{id}/progress: a fraction in [0, 1] (clamped), or a percent with percent=true."""

    progress: Annotated[float, Meta(ge=-1e9, le=1e9)] | None = None
    percent: bool = False
    message: Annotated[str, Meta(max_length=1_000)] | None = None
    data: Raw = Raw()
    checkpoint: Raw = Raw()


class WorkerProgressRequest(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/workers/progress, as the official SDKs send it: the job in the body and a
    `percentage` from 0 to 100. The fields of the PUT body are taken too."""

    job_id: Annotated[str, Meta(min_length=1, max_length=64)]
    percentage: Annotated[float, Meta(ge=0, le=100)] | None = None
    progress: Annotated[float, Meta(ge=-1e9, le=1e9)] | None = None
    percent: bool = False
    message: Annotated[str, Meta(max_length=1_000)] | None = None
    data: Raw = Raw()
    checkpoint: Raw = Raw()


CronName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-\.]*$", max_length=255)]


class CronRequest(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/cron, in the openapi shape (`job_template`) or the prose one (the job's fields
    at the top level). The template is an enqueue request body, validated as one at registration;
    the top-level fields this struct does not name are the job's (see CRON_FIELDS)."""

    name: CronName
    expression: Annotated[str, Meta(max_length=256)] | None = None
    cron: Annotated[str, Meta(max_length=256)] | None = None
    schedule: Annotated[str, Meta(max_length=256)] | None = None
    timezone: Annotated[str, Meta(max_length=64)] = "UTC"
    overlap_policy: Literal["skip", "allow", "cancel", "cancel_previous", "enqueue"] = "skip"
    enabled: bool = True
    description: Annotated[str, Meta(max_length=1024)] | None = None
    job_template: dict[str, Any] | None = None
    type: JobType | None = None
    args: list[Any] | None = None
    meta: dict[str, Any] | None = None
    options: dict[str, Any] | None = None


# The registration's own top-level names; any other top-level field of a cron request belongs to
# the job it enqueues (`queue`, `priority`, ... as on POST /ojs/v1/jobs).
CRON_FIELDS = frozenset(CronRequest.__struct_fields__) - {"type", "args", "meta", "options"}
# Job fields an enqueue request takes both at the top level and in `options`.
FLAT_OPTION_FIELDS = frozenset(EnqueueRequest.__struct_fields__) & frozenset(EnqueueOptions.__struct_fields__)


class CronPatch(msgspec.Struct, kw_only=True):
    enabled: bool | None = None


class PauseRequest(msgspec.Struct, kw_only=True):
    reason: str | None = None


class SchemaPut(msgspec.Struct, kw_only=True):
    """PUT /ojs/v1/admin/schemas/{type}/{version} (ojs-job-versioning.md 6.1): `schema`, or the
    prose's `args_schema`; `type` and `version`, when given, must be the path's."""

    schema: Raw = Raw()
    args_schema: Raw = Raw()
    type: str | None = None
    version: JobVersion | None = None
    compatible_with: Annotated[list[JobVersion], Meta(max_length=100)] | None = None


class SchemaPost(msgspec.Struct, kw_only=True):
    """POST /ojs/v1/schemas (ojs-schema-registry.md 4.1); `type` is accepted for `job_type`."""

    job_type: JobType | None = None
    type: JobType | None = None
    version: JobVersion | None = None
    schema: Raw = Raw()
    compatible_with: Annotated[list[JobVersion], Meta(max_length=100)] | None = None
