"""The TLS settings: they need a rediss:// URL, reach every redis-py client, and yield to the
URL's own query (the TLS connections themselves: tests/test_managed_redis.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from runtime.broker.clients import blocking_client, endpoint_client, redis_client, tls_options
from runtime.broker.wire import Address
from runtime.config import Settings, settings_from_env

TLS: dict[str, Any] = {"redis_tls_ca": "/etc/ca.pem", "redis_tls_cert": "/etc/client.pem", "redis_tls_key": "/etc/client.key"}


def test_tls_settings_without_a_rediss_url_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="rediss://"):
        Settings(redis_url="redis://127.0.0.1:6379/0", **TLS)
    with pytest.raises(ValueError, match="rediss://"):
        Settings(**TLS)  # the embedded Redis speaks no TLS


def test_tls_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OJS_REDIS_URL", "rediss://u:p@redis.example:6380/0")
    monkeypatch.setenv("OJS_REDIS_TLS_CA", "/etc/ca.pem")
    monkeypatch.setenv("OJS_REDIS_TLS_CERT", "/etc/client.pem")
    monkeypatch.setenv("OJS_REDIS_TLS_KEY", "/etc/client.key")
    settings = settings_from_env()
    assert (settings.redis_tls_ca, settings.redis_tls_cert, settings.redis_tls_key) == tuple(TLS.values())


def test_every_client_gets_the_tls_files_and_the_url_query_wins() -> None:
    settings = Settings(redis_url="rediss://u:p@redis.example:6380/0", **TLS)
    expected = {"ssl_ca_certs": "/etc/ca.pem", "ssl_certfile": "/etc/client.pem", "ssl_keyfile": "/etc/client.key"}
    assert tls_options(settings, settings.redis_url or "") == expected
    assert tls_options(settings, "redis://elsewhere:6379") == {}
    for client in (redis_client(settings), endpoint_client(settings, settings.redis_url or "")):
        kwargs = client.connection_pool.connection_kwargs
        assert {k: kwargs[k] for k in expected} == expected
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    sync = blocking_client(settings)
    assert {k: sync.connection_pool.connection_kwargs[k] for k in expected} == expected
    sync.close()
    overridden = redis_client(settings, "rediss://u:p@redis.example:6380/0?ssl_ca_certs=/other/ca.pem")
    assert overridden.connection_pool.connection_kwargs["ssl_ca_certs"] == "/other/ca.pem"


def test_the_lean_connection_reads_tls_from_a_url_and_from_a_client() -> None:
    address = Address.from_url("rediss://u:p@redis.example:6380/2?ssl_cert_reqs=none")
    assert address is not None and address.tls is not None
    assert (address.host, address.port, address.db, address.username) == ("redis.example", 6380, 2, "u")
    assert address.tls.verify_mode.name == "CERT_NONE"
    settings = msgspec.structs.replace(Settings(), redis_url="rediss://redis.example:6380")
    verified = Address.of_client(redis_client(settings))
    assert verified is not None and verified.tls is not None and verified.tls.verify_mode.name == "CERT_REQUIRED"
    assert verified.tls.check_hostname
    assert Address.from_url("redis://redis.example:6379").tls is None  # type: ignore[union-attr]
