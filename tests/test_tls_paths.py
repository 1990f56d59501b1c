"""TLS settings reach the testing kit's real mode, a handshake that never answers is not tried
again, and the admin API's config view keeps the TLS files' paths to itself."""

from __future__ import annotations

import asyncio
import socket
import ssl
import types
from pathlib import Path

import msgspec
import pytest
from redis import exceptions as rx

from runtime.api.admin import system
from runtime.api.routing import Request, Router
from runtime.broker.wire import Address, Wire
from runtime.config import Settings
from runtime.testing.real import RealContext, _OpenBroker
from tests.fixtures.tls_redis import make_certificates

URL = "rediss://127.0.0.1:1/0"


@pytest.fixture
def ca(tmp_path: Path) -> str:
    make_certificates(tmp_path)
    return str(tmp_path / "ca.pem")


def test_real_mode_takes_the_tls_settings_of_the_environment(monkeypatch: pytest.MonkeyPatch, ca: str) -> None:
    """README: the TLS variables reach every connection; the testing kit's real mode builds its
    Settings and its inspecting client without them (runtime/testing/real.py:90-92)."""
    monkeypatch.setenv("OJS_REDIS_TLS_CA", ca)
    context = RealContext(URL, key_prefix="{tls-kit}:")
    assert context.settings.redis_tls_ca == ca
    assert context._inspect.connection_pool.connection_kwargs.get("ssl_ca_certs") == ca  # noqa: SLF001


def test_the_testing_kits_broker_connection_takes_the_tls_settings(ca: str) -> None:
    """_OpenBroker (runtime/testing/real.py:275) connects with Redis.from_url(url): the settings'
    CA, client certificate and key are dropped (and redis+sentinel:// is not understood)."""
    settings = Settings(redis_url=URL, redis_tls_ca=ca, key_prefix="{tls-kit}:")

    async def main() -> dict[str, object]:
        async with _OpenBroker(URL, settings) as broker:
            return dict(broker.redis.connection_pool.connection_kwargs)

    kwargs = asyncio.run(main())
    assert kwargs.get("ssl_ca_certs") == ca


def test_a_handshake_that_never_answers_is_not_tried_again() -> None:
    """A server that accepts TCP but never answers the ClientHello: the attempt takes the whole
    deadline, and another would hold the command for one more (runtime/broker/wire.py _open)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the TCP handshake; nobody ever reads or writes
    port = listener.getsockname()[1]
    address = Address(host="127.0.0.1", port=port, tls=ssl.create_default_context(), command_timeout_s=0.3)

    async def main() -> None:
        with pytest.raises(rx.ConnectionError):
            await Wire(address).execute("PING")

    try:
        asyncio.run(main())
        listener.setblocking(False)
        attempts = 0
        while True:  # every connection the command made waits in the accept queue
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break
            attempts += 1
    finally:
        listener.close()
    assert attempts == 1


def test_the_admin_config_view_does_not_show_the_tls_key_files(ca: str, tmp_path: Path) -> None:
    """GET /ojs/v1/admin/system/config hides redis_url but lists redis_tls_key / _cert / _ca
    (runtime/api/admin/system.py:15): where the private key lies, to any read-only key holder."""
    key = str(tmp_path / "client.key")
    settings = Settings(redis_url=URL, redis_tls_ca=ca, redis_tls_cert=str(tmp_path / "client.pem"), redis_tls_key=key)
    services = types.SimpleNamespace(settings=settings, admin=None, history=None)
    router = Router()
    system.register(router, services)  # type: ignore[arg-type]
    handler, _params, _found = router.match("GET", "/ojs/v1/admin/system/config")
    assert handler is not None
    request = Request(method="GET", path="/ojs/v1/admin/system/config", query_string=b"", headers={}, body=b"",
                      request_id="r")
    response = asyncio.run(handler(request))
    body = getattr(response, "body", None) or response[-1]  # type: ignore[index]
    config = msgspec.json.decode(body)["config"]
    assert key not in msgspec.json.encode(config).decode()
