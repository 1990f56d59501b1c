"""Webhook subscriptions on the wire, validated at the boundary, and which events they want."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from runtime.envelope import JobType, QueueName
from runtime.errors import InvalidRequest

# An event type (job.completed, workflow.step_completed), a family (job.*) or everything (*).
EVENT_PATTERN = r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$"
EventPattern = Annotated[str, Meta(pattern=EVENT_PATTERN, max_length=100)]
EventPatterns = Annotated[list[EventPattern], Meta(min_length=1, max_length=50)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
Secret = Annotated[str, Meta(min_length=16, max_length=256)]
Metadata = Annotated[dict[Annotated[str, Meta(max_length=128)], Any], Meta(max_length=50)]
MAX_METADATA_BYTES = 8192
TEST_EVENT = "webhook.test"


class WebhookFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Attribute filter: when a list is given, the event's queue (job type) must be in it."""

    queues: Annotated[list[QueueName], Meta(max_length=100)] | None = None
    job_types: Annotated[list[JobType], Meta(max_length=100)] | None = None


class SubscriptionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /ojs/v1/webhooks/subscriptions. Unknown fields are refused, not dropped."""

    url: Url
    events: EventPatterns
    active: bool = True
    secret: Secret | None = None  # generated when not given
    filter: WebhookFilter | None = None
    metadata: Metadata | None = None


class SubscriptionPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """PATCH: only the fields given change; `filter` or `metadata` null removes it."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    events: EventPatterns | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET
    filter: WebhookFilter | None | msgspec.UnsetType = msgspec.UNSET
    metadata: Metadata | None | msgspec.UnsetType = msgspec.UNSET


class Subscription(msgspec.Struct, kw_only=True):
    """A stored subscription as the delivery loop and the views read it."""

    id: str
    url: str
    events: list[str]
    active: bool
    filter: WebhookFilter | None = None
    metadata: dict[str, Any] | None = None
    created_at_ms: int
    updated_at_ms: int
    consecutive_failures: int = 0
    disabled_reason: str | None = None
    disabled_at_ms: int | None = None
    after_event: tuple[int, int] = (0, 0)  # the newest event when it was made: it gets later ones

    def wants(self, event_type: str, data: dict[str, Any]) -> bool:
        """Type filter and, when present, the attribute filter (spec 5.2: both must match)."""
        if not type_matches(self.events, event_type):
            return False
        if self.filter is None:
            return True
        if self.filter.queues is not None and data.get("queue") not in self.filter.queues:
            return False
        return self.filter.job_types is None or data.get("job_type") in self.filter.job_types


def type_matches(patterns: list[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def check_url(url: str, *, allow_http: bool) -> str:
    """An absolute http(s) URL with a host and no credentials. Plain HTTP only when the server
    allows it (spec 8.4: HTTPS in production)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise InvalidRequest(f"url is not a valid URL: {err}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        allowed = " or ".join(schemes)
        raise InvalidRequest(f"url must use {allowed}" + ("" if allow_http else
                             " (plain HTTP needs OJS_WEBHOOKS_ALLOW_HTTP=true)"), details={"field": "url"})
    if not parts.hostname:
        raise InvalidRequest("url must name a host", details={"field": "url"})
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not carry credentials; deliveries are signed instead",
                             details={"field": "url"})
    if port == 0 or parts.fragment:
        raise InvalidRequest("url must have a valid port and no fragment", details={"field": "url"})
    return url


def check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is not None and len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes",
                             details={"field": "metadata"})
