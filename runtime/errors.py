"""The error hierarchy. Each class carries the OJS error code and HTTP status it maps to."""

from __future__ import annotations

from typing import Any


class OJSError(Exception):
    """Base of every error the broker reports to a client."""

    status = 500
    code = "internal_error"
    retryable = False
    error_type: str | None = None
    hint: str | None = None

    headers: tuple[tuple[bytes, bytes], ...] = ()  # extra response headers (Retry-After, ...)

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidPayload(OJSError):
    """The body is missing, not JSON, or not a JSON object."""

    status = 400
    code = "invalid_payload"
    hint = "Send a JSON object body with Content-Type application/openjobspec+json."


class InvalidRequest(OJSError):
    """A field is missing, has the wrong type, or is out of range."""

    status = 400
    code = "invalid_request"
    hint = "Check the request fields against the OJS HTTP binding."


class PolicyValidationError(OJSError):
    """A retry policy (or similar policy object) is invalid: 422 with type validation_error."""

    status = 422
    code = "validation_error"
    error_type = "validation_error"
    hint = "See the retry policy rules of the OJS retry specification."


class EnqueueRejected(OJSError):
    """A server-side enqueue hook refused the job."""

    status = 422
    code = "validation_error"
    error_type = "validation_error"


class ArgsSchemaMismatch(OJSError):
    """A job's args do not match the schema registered for its type and version."""

    status = 422
    code = "validation_error"
    error_type = "validation_error"
    hint = "Send args that match the schema: GET /ojs/v1/schemas/{type} shows the latest one."


class InvalidSchema(OJSError):
    """A schema registration whose document is not a valid JSON Schema."""

    status = 422
    code = "validation_error"
    error_type = "validation_error"
    hint = "Register a JSON Schema document (draft 2020-12 unless its $schema names another)."


class Unsupported(OJSError):
    status = 422
    code = "unsupported"


class NotFound(OJSError):
    status = 404
    code = "not_found"
    hint = "Check the identifier; resources may have been deleted or never existed."


class Duplicate(OJSError):
    status = 409
    code = "duplicate"
    hint = "A job with this id (or unique key) already exists."


class Conflict(OJSError):
    """The operation is not allowed in the resource's current state."""

    status = 409
    code = "conflict"
    hint = "The job is not in a state that allows this operation."


class Forbidden(OJSError):
    """The caller's key may read but not change anything."""

    status = 403
    code = "forbidden"
    hint = "This API key is read-only; use a key from OJS_API_KEY to change anything."


class QueueFull(OJSError):
    """A bounded queue (backpressure extension) has no room: nothing was enqueued."""

    status = 429
    code = "QUEUE_FULL"
    error_type = "queue_full"
    retryable = True
    hint = "Wait Retry-After seconds and retry, or raise the queue's max_depth."
    RETRY_AFTER_S = 5

    def __init__(self, queue: str, depth: int, bound: int) -> None:
        super().__init__(
            f"Queue '{queue}' has reached its depth bound ({bound}).",
            details={"queue": queue, "depth": depth, "max_depth": bound},
        )
        self.headers = (
            (b"retry-after", str(self.RETRY_AFTER_S).encode()),
            (b"x-ojs-queue-depth", str(depth).encode()),
            (b"x-ojs-queue-bound", str(bound).encode()),
        )


class PayloadTooLarge(OJSError):
    status = 413
    code = "payload_too_large"
    hint = "Reduce the request size or raise the server's configured limit."


class Unauthorized(OJSError):
    status = 401
    code = "unauthorized"
    hint = "Send Authorization: Bearer <api key>."


class MethodNotAllowed(OJSError):
    status = 405
    code = "method_not_allowed"


class BackendUnavailable(OJSError):
    """The job store could not be reached, and nothing of the request reached it."""

    status = 503
    code = "backend_unavailable"
    retryable = True
    hint = "The job store is unreachable; retry with backoff."


class ServerBusy(BackendUnavailable):
    """The endpoint is at its bound of connections and requests in progress; nothing was run."""

    hint = "The server is at its connection limit; retry with backoff."


class RequestTimeout(OJSError):
    """The client did not send its request (head or body) in time; nothing was run."""

    status = 408
    code = "request_timeout"
    retryable = True
    hint = "Send the whole request promptly; the connection is closed."


class BackendOutcomeUnknown(BackendUnavailable):
    """The job store was lost while the request was in flight: it may have taken effect."""

    retryable = False
    hint = ("The request may have taken effect: check before repeating it. An enqueue with a "
            "client-chosen job id is safe to repeat (409 duplicate when the first one ran).")


# --- handler control flow (raised by job handlers, never sent to an HTTP client) ----------------


class Retry(Exception):
    """Raised by a handler: fail this attempt and run the job again, after `delay_s` when given,
    else after the retry policy's backoff. The attempt counts; a job out of attempts is discarded.

    `key_paused_s` (a downstream said "429, come back in N s"): the job's rate-limit key takes no
    new starts for that long, for every job of the key, not only this one; the retry waits as
    long unless `delay_s` says otherwise."""

    def __init__(self, message: str = "retry requested by the handler", *, delay_s: float | None = None,
                 key_paused_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.delay_s = delay_s if delay_s is not None else key_paused_s
        self.key_paused_s = key_paused_s


class Discard(Exception):
    """Raised by a handler: give up on this job now. It is discarded and never retried."""

    def __init__(self, reason: str = "discarded by the handler") -> None:
        super().__init__(reason)
        self.reason = reason
