"""The TLS context of a connection, built from redis-py's connection keywords, so that every kind
of connection the runtime opens (redis-py's, the lean one, a Sentinel exchange) verifies the
server, and presents a client certificate, the same way."""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio.connection import SSLConnection

TLS_SCHEMES = ("rediss", "rediss+cluster", "rediss+sentinel")


def is_tls_url(url: str | None) -> bool:
    """Whether `url` is one of the TLS URLs (rediss://, rediss+cluster://, rediss+sentinel://)."""
    return bool(url) and url.split("://", 1)[0].lower() in TLS_SCHEMES  # type: ignore[union-attr]


def tls_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py would build from these keywords (``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``, ...); others are ignored."""
    context: ssl.SSLContext = SSLConnection(**ssl_keywords(kwargs)).ssl_context.get()
    return context


def ssl_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The TLS keywords among redis-py connection keywords."""
    return {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
