"""Redis behind Sentinel: the ``redis+sentinel://`` URL, and where its primary is now.

The URL names the Sentinels and the master (the name Sentinel monitors it by)::

    redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<master-name>[/db]
        [?sentinel_password=...&sentinel_username=...]

``rediss+sentinel://`` is the same over TLS: to the Sentinels and to the primary, with the one CA
and client certificate (``OJS_REDIS_TLS_CA``, ``OJS_REDIS_TLS_CERT``, ``OJS_REDIS_TLS_KEY``, or
the URL's ``ssl_*`` query parameters, as for ``rediss://``), as a deployment whose servers take
only TLS needs.

The credentials before ``@`` are the primary's (what ``redis://`` would carry); the Sentinels'
own, if they ask for any, are the ``sentinel_*`` query parameters, else ``OJS_SENTINEL_PASSWORD``
(and ``OJS_SENTINEL_USERNAME``). ``OJS_SENTINEL_MASTER`` names the master when the URL's path
does not. Nothing else changes for the callers: every connection asks the Sentinels where the
primary is each time it connects (:func:`primary_address`, one short exchange with the first
Sentinel that knows, which is then asked first), so a connection lost in a failover reconnects to
the promoted replica. A connection of either kind that finds itself talking to a replica (a
``READONLY`` reply, or a handshake whose ``ROLE`` is not ``master``) is closed so the next one asks again: the
refused command did not run (:class:`NotPrimary`).

Both client kinds use this: the lean connection (:mod:`runtime.broker.wire`, through
:class:`~runtime.broker.wire.Address`) and redis-py (the connection classes below, which
:mod:`runtime.broker.clients` puts in its pools).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis
import redis.asyncio
from redis import exceptions as rx
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

from runtime.broker.tls import ssl_keywords, tls_context

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# One Sentinel's answer is a few bytes on a local network: one that takes longer than this is
# skipped for the next.
ASK_TIMEOUT_S = 1.0


def _pack(command: tuple[Any, ...]) -> bytes:
    # hiredis's stub types the tuple as having one element; any length is accepted.
    packed: bytes = hiredis.pack_command(command)
    return packed


class PrimaryNotFound(rx.ConnectionError):
    """No Sentinel could say where the primary is (none answered, or none knows it yet): the
    command was not sent."""


class NotPrimary(rx.ConnectionError):
    """The server this connection reached is a replica now (a failover happened): the command
    was refused there and did not run; the connection is closed and the next one asks again."""


class SentinelTarget:
    """The Sentinels of one master, and their credentials. The order of `sentinels` changes: the
    last one that answered is asked first. Shared by every connection made from one URL."""

    __slots__ = ("sentinels", "master", "username", "password", "tls", "tls_options")

    def __init__(self, sentinels: list[tuple[str, int]], master: str, *, username: str | None = None,
                 password: str | None = None, tls_options: dict[str, Any] | None = None) -> None:
        if not sentinels or not master:
            raise ValueError("a redis+sentinel:// URL needs at least one Sentinel and a master name")
        self.sentinels = list(sentinels)
        self.master = master
        self.username, self.password = username, password
        # rediss+sentinel://: redis-py's TLS keywords, and the context of every connection made
        # from them, the Sentinels' and the primary's
        self.tls_options = tls_options
        self.tls = None if tls_options is None else tls_context(tls_options)

    def __repr__(self) -> str:
        where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"SentinelTarget({where}/{self.master})"

    def answered(self, index: int) -> None:
        if index:
            self.sentinels.insert(0, self.sentinels.pop(index))

    def _ask(self) -> bytes:
        command: list[bytes] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            command.append(_pack(("AUTH", *auth)))
        command.append(_pack(("SENTINEL", "get-master-addr-by-name", self.master)))
        return b"".join(command)

    def _replies(self) -> int:
        return 2 if self.password is not None else 1


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0].lower() in SCHEMES  # type: ignore[union-attr]


def parse_url(url: str, **options: Any) -> tuple[SentinelTarget, dict[str, Any]]:
    """The Sentinels of `url`, and the primary's connection options (db, username, password).
    For ``rediss+sentinel://`` the target has the TLS keywords: redis-py's from `options`, and
    the URL's query, which wins."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"not a {SCHEMES[0]}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [host_port(entry.strip()) for entry in hosts.split(",") if entry.strip()]
    path = [unquote(p) for p in parts.path.split("/") if p]
    master = path[0] if path else os.environ.get("OJS_SENTINEL_MASTER", "")
    db = int(path[1]) if len(path) > 1 else 0
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "db" in query:
        db = int(query["db"])
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    tls_options = None
    if parts.scheme.lower() == "rediss+sentinel":  # the query's values read as redis-py reads rediss://'s
        given = {k: URL_QUERY_ARGUMENT_PARSERS.get(k, str)(v) for k, v in ssl_keywords(query).items()}
        tls_options = {**ssl_keywords(options), **given}
    target = SentinelTarget(
        sentinels, master,
        username=query.get("sentinel_username") or os.environ.get("OJS_SENTINEL_USERNAME") or None,
        password=query.get("sentinel_password") or os.environ.get("OJS_SENTINEL_PASSWORD") or None,
        tls_options=tls_options,
    )
    return target, {"db": db, "username": username, "password": password}


def host_port(entry: str, default_port: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (also for runtime.broker.cluster's URLs)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if port else default_port


def _address_of(replies: list[Any]) -> tuple[str, int] | None:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise rx.ResponseError(str(reply))
    answer = replies[-1]
    if not answer:
        return None  # this Sentinel does not know the master (yet)
    host, port = answer
    return host.decode(), int(port)


async def primary_address(target: SentinelTarget) -> tuple[str, int]:
    """Ask the Sentinels in turn where the primary is; the first that knows answers."""
    request, expected = target._ask(), target._replies()
    errors = []
    for index, (host, port) in enumerate(list(target.sentinels)):
        try:
            address = await asyncio.wait_for(_ask_one(host, port, request, expected, target.tls), ASK_TIMEOUT_S)
            if address is None:
                errors.append(f"{host}:{port} does not know {target.master!r}")
                continue
        except (OSError, TimeoutError, rx.RedisError, ValueError) as err:
            errors.append(f"{host}:{port}: {err or type(err).__name__}")
            continue
        target.answered(index)
        return address
    raise PrimaryNotFound(f"no Sentinel gave the primary of {target.master!r} ({'; '.join(errors)})")


async def _ask_one(host: str, port: int, request: bytes, expected: int,
                   tls: ssl.SSLContext | None) -> tuple[str, int] | None:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        writer.write(request)
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < expected:
            data = await reader.read(4096)
            if not data:
                raise rx.ConnectionError("Sentinel closed the connection")
            parser.feed(data)
            while len(replies) < expected and (reply := parser.gets()) is not False:
                replies.append(reply)
        return _address_of(replies)
    finally:
        writer.close()


def _blocking_connection(host: str, port: int, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=ASK_TIMEOUT_S)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def primary_address_blocking(target: SentinelTarget) -> tuple[str, int]:
    """:func:`primary_address` for synchronous code (the supervisor, recovery)."""
    request, expected = target._ask(), target._replies()
    errors = []
    for index, (host, port) in enumerate(list(target.sentinels)):
        try:
            with _blocking_connection(host, port, target.tls) as sock:
                sock.sendall(request)
                parser = hiredis.Reader()
                replies: list[Any] = []
                while len(replies) < expected:
                    data = sock.recv(4096)
                    if not data:
                        raise rx.ConnectionError("Sentinel closed the connection")
                    parser.feed(data)
                    while len(replies) < expected and (reply := parser.gets()) is not False:
                        replies.append(reply)
            address = _address_of(replies)
            if address is None:
                errors.append(f"{host}:{port} does not know {target.master!r}")
                continue
        except (OSError, rx.RedisError, ValueError) as err:
            errors.append(f"{host}:{port}: {err or type(err).__name__}")
            continue
        target.answered(index)
        return address
    raise PrimaryNotFound(f"no Sentinel gave the primary of {target.master!r} ({'; '.join(errors)})")


# --- redis-py: connections that find the primary through the Sentinels ---------------------------


def _check_role(connection: Any, role: Any) -> None:
    """Raise :class:`NotPrimary` unless `role` (a ``ROLE`` reply) is a primary's. redis-py
    disconnects a connection whose handshake fails, so the next attempt asks the Sentinels again."""
    kind = role[0] if isinstance(role, list | tuple) and role else role
    if (kind.decode() if isinstance(kind, bytes) else kind) != "master":
        raise NotPrimary(f"{connection.host}:{connection.port}, the server Sentinel named, is not the "
                         f"primary (a failover is under way)")


class SentinelPrimaryConnection(redis.asyncio.Connection):
    """A redis-py asyncio connection to the current primary of `sentinel`."""

    def __init__(self, *, sentinel: SentinelTarget, **kwargs: Any) -> None:
        self.sentinel = sentinel
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        self.host, self.port = await primary_address(self.sentinel)
        await super()._connect()

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        # Sentinel may not know yet that its primary was demoted (see the lean connection's handshake)
        await self.send_command("ROLE", check_health=False)
        _check_role(self, await self.read_response())

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except rx.ReadOnlyError as err:
            await self.disconnect()
            raise NotPrimary(f"{self.host}:{self.port} is no longer the primary: {err}") from err


class BlockingSentinelPrimaryConnection(redis.Connection):
    """:class:`SentinelPrimaryConnection` for redis-py's synchronous client."""

    def __init__(self, *, sentinel: SentinelTarget, **kwargs: Any) -> None:
        self.sentinel = sentinel
        super().__init__(**kwargs)

    def _connect(self) -> Any:
        self.host, self.port = primary_address_blocking(self.sentinel)
        return super()._connect()

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        self.send_command("ROLE", check_health=False)
        _check_role(self, self.read_response())

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except rx.ReadOnlyError as err:
            self.disconnect()
            raise NotPrimary(f"{self.host}:{self.port} is no longer the primary: {err}") from err


class SentinelPrimarySSLConnection(SentinelPrimaryConnection, redis.asyncio.SSLConnection):
    """:class:`SentinelPrimaryConnection` over TLS (rediss+sentinel://)."""


class BlockingSentinelPrimarySSLConnection(BlockingSentinelPrimaryConnection, redis.SSLConnection):
    """:class:`BlockingSentinelPrimaryConnection` over TLS (rediss+sentinel://)."""


def pool_options(url: str, *, blocking: bool = False, **options: Any) -> dict[str, Any]:
    """What a redis-py connection pool needs for a ``redis+sentinel://`` URL (`options`: the
    pool's TLS keywords, for ``rediss+sentinel://``)."""
    target, primary = parse_url(url, **options)
    if blocking:
        kind: type = BlockingSentinelPrimarySSLConnection if target.tls else BlockingSentinelPrimaryConnection
    else:
        kind = SentinelPrimarySSLConnection if target.tls else SentinelPrimaryConnection
    return {"connection_class": kind, "sentinel": target, **primary, **(target.tls_options or {})}
