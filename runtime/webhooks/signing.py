"""Request signing (ojs-webhooks.md 8.1): HMAC-SHA256 over ``timestamp + "." + body``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_header(secrets_in_use: Sequence[str], timestamp: int, body: bytes) -> str:
    """The X-OJS-Signature value: one signature per secret in use, the newest first; during a
    rotation the previous secret signs too, so receivers can switch at their own pace (8.3)."""
    return ",".join(signature(secret, timestamp, body) for secret in secrets_in_use)


def verify(secret: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when any signature in the header is the secret's (constant-time comparison)."""
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))


USER_AGENT = "OJS-Webhook/1.0 (ojs-runtime)"


def signed_headers(*, subscription_id: str, delivery_id: str, event_type: str, secrets_in_use: Sequence[str],
                   body: bytes, timestamp: int) -> dict[str, str]:
    """The request headers of one delivery attempt (spec 5.3)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-OJS-Event-Type": event_type,
        "X-OJS-Delivery-ID": delivery_id,
        "X-OJS-Subscription-ID": subscription_id,
        "X-OJS-Timestamp": str(timestamp),
        "X-OJS-Signature": signature_header(secrets_in_use, timestamp, body),
    }
