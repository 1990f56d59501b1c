"""The redis-py clients of the runtime's processes, built with the lean connection's protections
(:mod:`runtime.broker.wire`): a deadline on every command and TCP keepalive, so a silent link
fails the call within ``Settings.redis_command_timeout_ms`` instead of hanging it forever.

Every connection the runtime opens is made here (or derived from a client made here: the lean
connection, the probes), so each honours TLS the same way: a ``rediss://`` URL, with the CA,
client certificate and key of the ``redis_tls_*`` settings unless the URL's query names them
(``?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...&ssl_cert_reqs=required``, redis-py's
spelling). ACL users come with the URL (``rediss://user:password@host``)."""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from runtime.broker import cluster, sentinel
from runtime.broker.keys import DEFAULT_PREFIX
from runtime.broker.tls import is_tls_url
from runtime.broker.wire import CommandNotSent, keepalive_options
from runtime.config import Settings

# An idle pooled connection is pinged before reuse after this long (a link that died while idle
# is found before a command is lost on it).
HEALTH_CHECK_INTERVAL_S = 30


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py's TLS keywords from the settings, for a ``rediss://`` URL (its query overrides them)."""
    if not is_tls_url(url):
        return {}
    given = (("ssl_ca_certs", settings.redis_tls_ca), ("ssl_certfile", settings.redis_tls_cert),
             ("ssl_keyfile", settings.redis_tls_key))
    return {name: value for name, value in given if value}


def _options(settings: Settings, url: str) -> dict[str, Any]:
    timeout_s = settings.redis_command_timeout_ms / 1000 or None
    options: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if not url.startswith("unix:"):
        options.update(socket_keepalive=True, socket_keepalive_options=keepalive_options())
    return {**options, **tls_options(settings, url)}


def from_url(url: str, *, key_prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> Redis:
    """``Redis.from_url`` that also takes ``redis+sentinel://`` URLs (:mod:`runtime.broker.sentinel`)
    and ``redis+cluster://`` ones (:mod:`runtime.broker.cluster`: its connections go to the owner
    of `key_prefix`'s slot)."""
    if sentinel.is_sentinel_url(url):
        return Redis.from_pool(ConnectionPool(**{**kwargs, **sentinel.pool_options(url, **kwargs)}))
    if cluster.is_cluster_url(url):
        options = cluster.pool_options(url, home_key=key_prefix, wait_s=_wait_s(kwargs))
        return cluster.ClusterNodeRedis.from_pool(ConnectionPool(**options, **kwargs))
    return Redis.from_url(url, **kwargs)


def blocking_from_url(url: str, *, key_prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> redis.Redis:
    """The same for redis-py's synchronous client."""
    if sentinel.is_sentinel_url(url):
        options = sentinel.pool_options(url, blocking=True, **kwargs)
        return redis.Redis.from_pool(redis.ConnectionPool(**{**kwargs, **options}))
    if cluster.is_cluster_url(url):
        options = cluster.pool_options(url, blocking=True, home_key=key_prefix, wait_s=_wait_s(kwargs))
        return cluster.BlockingClusterNodeRedis.from_pool(redis.ConnectionPool(**options, **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def _wait_s(kwargs: dict[str, Any]) -> float:
    """How long a cluster connection waits out a slot being moved: the command deadline."""
    return float(kwargs.get("socket_timeout") or 5.0)


def redis_client(settings: Settings, url: str | None = None, **kwargs: Any) -> Redis:
    """A redis-py asyncio client for `url` (default: the configured one)."""
    url = url or settings.redis_url or ""
    return from_url(url, key_prefix=settings.key_prefix, **{**_options(settings, url), **kwargs})


def blocking_client(settings: Settings, url: str | None = None, **kwargs: Any) -> redis.Redis:
    """A synchronous redis-py client for `url` (default: the configured one), TLS included: for
    the supervisor's checks before it forks."""
    url = url or settings.redis_url or ""
    return blocking_from_url(url, key_prefix=settings.key_prefix, **{**tls_options(settings, url), **kwargs})


class _WaitingPool(BlockingConnectionPool):
    """Callers wait for a free connection. One that does not come in time was surely never
    used, which is what a 503 may then promise: retryable, even for a POST."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as err:
            if isinstance(err, CommandNotSent) or not isinstance(err.__cause__, TimeoutError):
                raise
            raise CommandNotSent(f"no free job store connection within {self.timeout:g} s") from None


def endpoint_client(settings: Settings, url: str) -> Redis:
    """The HTTP endpoint's client: the same protections, and a bounded pool whose callers queue
    for a connection (a burst waits instead of failing at once)."""
    bounds = {"max_connections": settings.redis_max_connections, "timeout": settings.redis_pool_timeout_ms / 1000}
    if sentinel.is_sentinel_url(url):
        options = _options(settings, url)
        pool = _WaitingPool(**{**bounds, **options, **sentinel.pool_options(url, **options)})
    elif cluster.is_cluster_url(url):
        options = _options(settings, url)
        pool = _WaitingPool(**cluster.pool_options(url, home_key=settings.key_prefix, wait_s=_wait_s(options)),
                            **bounds, **options)
        return cluster.ClusterNodeRedis(connection_pool=pool)
    else:
        pool = _WaitingPool.from_url(url, **bounds, **_options(settings, url))
    return Redis(connection_pool=pool)
