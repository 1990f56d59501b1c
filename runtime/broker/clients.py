"""The redis-py clients of the runtime's processes, built with the lean connection's protections
(:mod:`runtime.broker.wire`): a deadline on every command and TCP keepalive, so a silent link
fails the call within ``Settings.redis_command_timeout_ms`` instead of hanging it forever."""

from __future__ import annotations

import socket
from typing import Any

from redis.asyncio import Redis

from runtime.broker.wire import KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES
from runtime.config import Settings

# An idle pooled connection is pinged before reuse after this long (a link that died while idle
# is found before a command is lost on it).
HEALTH_CHECK_INTERVAL_S = 30


def keepalive_options() -> dict[int, int]:
    """TCP keepalive timing, where the platform names the options (Linux does)."""
    options = {}
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return options


def redis_client(settings: Settings, url: str | None = None, **kwargs: Any) -> Redis:
    """A redis-py asyncio client for `url` (default: the configured one)."""
    timeout_s = settings.redis_command_timeout_ms / 1000 or None
    options: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if not (url or settings.redis_url or "").startswith("unix:"):
        options.update(socket_keepalive=True, socket_keepalive_options=keepalive_options())
    options.update(kwargs)
    return Redis.from_url(url or settings.redis_url or "", **options)
