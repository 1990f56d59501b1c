"""The Redis-backed job store: keys, Lua scripts and the operations built on them."""

from __future__ import annotations

from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import TimeoutError as _RedisTimeoutError

# Errors that mean "the job store is unreachable" (as opposed to a bad request).
BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    _RedisConnectionError, _RedisTimeoutError, ConnectionError, TimeoutError,
)
