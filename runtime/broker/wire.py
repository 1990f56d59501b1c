"""A lean Redis connection for the hot paths: script calls, notifications, handlers' commands.

One socket per process (per event loop) carries every coroutine's commands. Requests are
pipelined: each caller appends its packed command and a future, the replies come back in order,
and the commands queued during one loop iteration leave in one write (ten handlers finishing
together cost one system call, not ten). Packing and parsing are hiredis's C code.

This is what makes a round trip cost tens of microseconds of CPU instead of a hundred or more; the
general-purpose client (redis-py) stays for everything else (admin reads, pipelines, health).
Errors are redis-py's exception classes, so callers catch one family either way.

A connection that is found closed before a command is sent is opened again transparently (a
restarted Redis costs nothing). A command in flight when the connection drops fails with
ConnectionError and is not re-sent: a script may have run, and only its caller knows whether a
second run is harmless. The two failures are told apart: :class:`CommandNotSent` (no connection
could be made, or it was lost before the command was written: it surely did not run) and
:class:`OutcomeUnknown` (lost after the command was written: it may have run).

A silent link (a peer gone without a FIN or RST, a dropped route) would leave the waiters waiting
forever: every connection has a deadline, checked by one timer per connection (never one per
command): a connection that has had commands waiting and no reply at all for a whole
``command_timeout_s`` is closed, so each waiter fails with OutcomeUnknown. A command thus waits
between one and two deadlines at most. TCP keepalive is on as well, for the idle connections
(a subscription) that the deadline does not watch; :func:`subscribe` pings its connection.

Behind Sentinel (``redis+sentinel://``, ``rediss+sentinel://``: :mod:`runtime.broker.sentinel`) each connect first asks
the Sentinels where the primary is and checks its ``ROLE``; a ``READONLY`` reply (the server was
demoted) closes the connection and fails the command as not sent, so the next one asks again.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis import exceptions as rx
from redis.asyncio.connection import parse_url

from runtime.broker import sentinel as sentinels
from runtime.broker.tls import tls_context

CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF_S = 0.05
# Long enough for the biggest batched script call (a thousand-job enqueue, a full scheduler step),
# short enough that a dead link is noticed within seconds. Settings.redis_command_timeout_ms.
DEFAULT_COMMAND_TIMEOUT_S = 5.0
# TCP keepalive: first probe after this many idle seconds, then one every KEEPALIVE_INTERVAL_S;
# the kernel gives up after KEEPALIVE_PROBES unanswered probes.
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 3

# Error prefixes that redis-py maps to classes of their own; anything else is a ResponseError.
_ERRORS: dict[str, type[rx.RedisError]] = {
    "NOSCRIPT": rx.NoScriptError,
    "LOADING": rx.BusyLoadingError,
    "READONLY": rx.ReadOnlyError,
    "NOAUTH": rx.AuthenticationError,
    "WRONGPASS": rx.AuthenticationError,
    "NOPERM": rx.NoPermissionError,
}


class CommandNotSent(rx.ConnectionError):
    """The command never left this process: it surely did not run."""


class OutcomeUnknown(rx.ConnectionError):
    """The connection was lost after the command was written: it may have run."""


class Refused(CommandNotSent):
    """Redis refused the command before running it, for a while (out of memory under
    ``noeviction``, busy with a long script, no replica to write with): it did not run, and may
    be sent again later, like a command that never left."""


# Error prefixes of such refusals (BUSY only whole: BUSYGROUP and BUSYKEY are answers, not waits).
_REFUSALS = frozenset({"OOM", "BUSY", "MASTERDOWN", "NOREPLICAS"})


def _pack(command: tuple[Any, ...]) -> bytes:
    # hiredis's stub types the tuple as having one element; any length is accepted.
    packed: bytes = hiredis.pack_command(command)
    return packed


def _error(reply: hiredis.ReplyError) -> rx.RedisError:
    message = str(reply)
    code = message.split(" ", 1)[0]
    if code in _REFUSALS:
        return Refused(f"Redis refused the command, which did not run: {message}")
    return _ERRORS.get(code, rx.ResponseError)(message)


class Address:
    """Where and how to connect: TCP host/port or a Unix socket path, or the primary that
    `sentinel` names (asked at each connect); TLS; credentials; database."""

    __slots__ = ("host", "port", "path", "db", "username", "password", "command_timeout_s", "sentinel", "tls",
                 "cluster")

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str = "", db: int = 0,
                 username: str | None = None, password: str | None = None,
                 command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
                 sentinel: sentinels.SentinelTarget | None = None, tls: ssl.SSLContext | None = None,
                 cluster: Any = None) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.command_timeout_s = command_timeout_s  # the connection's deadline (see the module text)
        self.sentinel = sentinel
        self.tls = tls  # TCP only: the context the connection is wrapped in (rediss://)
        self.cluster = cluster  # a runtime.broker.cluster.ClusterTarget: the nodes of a redis+cluster:// URL

    def with_timeout(self, command_timeout_s: float) -> Address:
        return Address(host=self.host, port=self.port, path=self.path, db=self.db, username=self.username,
                       password=self.password, command_timeout_s=command_timeout_s, sentinel=self.sentinel,
                       tls=self.tls, cluster=self.cluster)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Address | None:
        """redis://, rediss://, unix:// and redis(s)+sentinel:// URLs, parsed as redis-py parses them
        (the URL's query wins over `options`, redis-py's keywords such as ``ssl_ca_certs``); None
        for what this connection does not speak."""
        if sentinels.is_sentinel_url(url):
            target, primary = sentinels.parse_url(url, **options)
            return cls(sentinel=target, tls=target.tls, **primary)
        from runtime.broker import cluster  # it builds on this module's errors

        if cluster.is_cluster_url(url):
            nodes, node_options = cluster.parse_url(url)
            tls = tls_context({**options, **node_options}) if nodes.tls else None
            return cls(cluster=nodes, username=nodes.username, password=nodes.password, tls=tls)
        kwargs = {**options, **parse_url(url)}
        kind = kwargs.pop("connection_class", None)
        return cls._of(kind.__name__ if kind else "Connection", kwargs)

    @classmethod
    def of_client(cls, redis: Any) -> Address | None:
        """The address a redis-py asyncio client connects to, its TLS settings included; None
        when it is not TCP, TLS or a Unix socket (a custom connection class)."""
        pool = redis.connection_pool
        return cls._of(pool.connection_class.__name__, pool.connection_kwargs)

    @classmethod
    def _of(cls, kind: str, kwargs: dict[str, Any]) -> Address | None:
        common: dict[str, Any] = {"db": int(kwargs.get("db") or 0), "username": kwargs.get("username"),
                  "password": kwargs.get("password")}
        if isinstance(kwargs.get("sentinel"), sentinels.SentinelTarget):
            return cls(sentinel=kwargs["sentinel"], tls=kwargs["sentinel"].tls, **common)
        if kwargs.get("cluster") is not None:
            tls = tls_context({k: v for k, v in kwargs.items() if k != "cluster"}) if kwargs["cluster"].tls else None
            return cls(cluster=kwargs["cluster"], **common, tls=tls)
        tcp: dict[str, Any] = {"host": kwargs.get("host") or "127.0.0.1", "port": int(kwargs.get("port") or 6379)}
        if kind == "Connection":
            return cls(**tcp, **common)
        if kind == "SSLConnection":
            return cls(**tcp, **common, tls=tls_context(kwargs))
        if kind == "UnixDomainSocketConnection":
            return cls(path=kwargs["path"], **common)
        return None


def keepalive_options() -> dict[int, int]:
    """TCP keepalive timing, where the platform names the options (Linux does)."""
    return {getattr(socket, name): value
            for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                                ("TCP_KEEPCNT", KEEPALIVE_PROBES))
            if hasattr(socket, name)}


def _keepalive(transport: Any) -> None:
    """TCP keepalive on the connection's socket (Unix sockets have none: the kernel knows)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in keepalive_options().items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # keepalive is a safety net; the command deadline still holds


class _Protocol(asyncio.Protocol):
    """One connection: a FIFO of waiting futures matched to replies as they arrive. Replies no
    request waits for (a subscribed connection's messages) go to `on_push`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        self.loop = loop
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.transport: Any = None
        self.closed = loop.create_future()
        self.on_push: Callable[[Any], None] | None = None
        self.timeout_s = timeout_s
        self.replies = 0  # replies received so far: the deadline's measure of progress
        self._watch: asyncio.TimerHandle | None = None
        self._watched: int | None = None  # `replies` at the last check, when commands were waiting
        self._expired = False

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio's classes
        self.transport = transport
        _keepalive(transport)
        if self.timeout_s > 0:
            self._watch = self.loop.call_later(self.timeout_s, self._check_deadline)

    def _check_deadline(self) -> None:
        """Once per `timeout_s`: commands waited at the last check too and no reply came since,
        so the oldest has waited at least `timeout_s`: the link is dead or Redis is stuck."""
        waiting = bool(self.waiters) and len(self.waiters) > len(self.outgoing)
        if waiting and self._watched == self.replies:
            self._expired = True
            self.transport.abort()  # not close(): a write buffer that cannot drain would hold it open
            return
        self._watched = self.replies if waiting else None
        self._watch = self.loop.call_later(self.timeout_s, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.replies += 1
            if not self.waiters:  # a subscribed connection's messages
                if self.on_push is not None:
                    self.on_push(reply)
                continue
            waiter = self.waiters.popleft()
            if waiter.done():  # its caller was cancelled; the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(_error(reply))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._expired:
            why = f"Redis did not answer within {self.timeout_s:g}s; connection closed."
        else:
            why = f"Connection to Redis lost: {exc}" if exc else "Connection closed by server."
        self._fail_unwritten(why)
        error = OutcomeUnknown(f"{why} The command had been sent; its outcome is unknown.")
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail_unwritten(self, why: str) -> None:
        """Fail the commands still waiting to be written (the newest waiters, one per command)."""
        error = CommandNotSent(f"{why} The command was not sent.")
        for _ in range(len(self.outgoing)):
            waiter = self.waiters.pop()
            if not waiter.done():
                waiter.set_exception(error)
        self.outgoing = []

    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done() and not self.transport.is_closing()

    def request(self, packed: bytes) -> asyncio.Future[Any]:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        return waiter

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._fail_unwritten("Connection to Redis closing.")
            return
        data, self.outgoing = b"".join(self.outgoing), []
        self.transport.write(data)


async def _where(address: Address) -> tuple[str, int]:
    """The TCP host and port to connect to now: behind Sentinel, where the primary is now."""
    if address.sentinel is not None:
        return await sentinels.primary_address(address.sentinel)
    if address.cluster is not None:
        node: tuple[str, int] = address.cluster.node_for(None)
        return node
    return address.host, address.port


def _where_text(address: Address) -> str:
    if address.path:
        return address.path
    where = address.sentinel or address.cluster
    return repr(where) if where else f"{address.host}:{address.port}"


async def _open(address: Address, node: tuple[str, int] | None = None) -> _Protocol:
    """Connect (to `node`, on a cluster), authenticate and select the database; retried briefly
    (a Redis that is starting)."""
    loop = asyncio.get_running_loop()
    timeout_s = address.command_timeout_s if address.command_timeout_s > 0 else DEFAULT_COMMAND_TIMEOUT_S
    delay_s = CONNECT_BACKOFF_S
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            def protocol() -> _Protocol:
                return _Protocol(loop, address.command_timeout_s)

            if address.path:
                connect = loop.create_unix_connection(protocol, address.path)
            else:
                host, port = node or await _where(address)
                connect = loop.create_connection(protocol, host, port, ssl=address.tls)
            _transport, proto = await asyncio.wait_for(connect, timeout_s)
            break
        except ssl.SSLError as err:  # a certificate refused, a protocol mismatch: trying again cannot help
            raise rx.ConnectionError(f"TLS handshake with Redis at {address.host}:{address.port} failed: {err}") from err
        except TimeoutError as err:
            # A connect or TLS handshake that took the whole deadline: another attempt would hold
            # the command for one more (the retries are for a Redis that is starting, which
            # refuses at once).
            raise rx.ConnectionError(f"Cannot connect to Redis at {_where_text(address)}: no answer within "
                                     f"{timeout_s:g} s") from err
        except (OSError, sentinels.PrimaryNotFound) as err:
            if attempt == CONNECT_ATTEMPTS:
                raise rx.ConnectionError(f"Cannot connect to Redis at {_where_text(address)}: {err}") from err
            await asyncio.sleep(delay_s)
            delay_s *= 2
    handshake: list[asyncio.Future[Any]] = []
    if address.password is not None:
        auth = (address.username, address.password) if address.username else (address.password,)
        handshake.append(proto.request(_pack(("AUTH", *auth))))
    if address.db:
        handshake.append(proto.request(_pack(("SELECT", address.db))))
    if address.sentinel is not None:  # Sentinel may not know yet that its primary was demoted
        handshake.append(proto.request(_pack(("ROLE",))))
    try:
        replies = await asyncio.gather(*handshake)
        if address.sentinel is not None and replies[-1][0] != b"master":
            raise sentinels.NotPrimary("the server Sentinel named is not the primary (a failover is under way)")
    except BaseException:
        if proto.transport is not None:
            proto.transport.close()
        raise
    return proto


class Wire:
    """A pipelined connection shared by every coroutine of one event loop (see the module text).
    Opened on first use and again after it was lost; a new event loop (a forked child, a test's
    fresh loop) gets a new connection, the old one is left to its own loop."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._proto: _Protocol | None = None
        self._opening: asyncio.Task[_Protocol] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Wire:
        """A connection to `url` (redis://, rediss://, unix://, redis+sentinel://); `options` are redis-py's
        connection keywords (``ssl_ca_certs=...``), which the URL's query overrides."""
        address = Address.from_url(url, **options)
        if address is None:
            raise ValueError(f"unsupported Redis URL for the lean connection: {url!r}")
        return cls.of(address)

    @classmethod
    def of(cls, address: Address) -> Wire:
        """The connection for `address`: on a Redis Cluster, one that follows the slot map
        (:class:`runtime.broker.cluster_wire.ClusterWire`)."""
        if address.cluster is not None and cls is Wire:
            from runtime.broker.cluster_wire import ClusterWire

            return ClusterWire(address)
        return cls(address)

    async def execute(self, *args: Any) -> Any:
        """Send one command; return its reply (bytes, int, list, None) or raise its error.
        Concurrent callers' commands share the connection and, within one loop iteration, a write."""
        proto = self._proto
        if proto is None or proto.loop is not asyncio.get_running_loop() or not proto.is_open():
            proto = await self._ready()
        try:
            return await proto.request(_pack(args))
        except rx.ReadOnlyError as err:
            raise self._not_primary(proto, err) from err

    async def execute_many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send `commands` back to back in one write; their replies, an error in place of a
        command's reply where it failed (a lost connection fails them all).

        A ``READONLY`` reply (behind Sentinel: the server was demoted during the batch) fails that
        command and every later one as not sent; the replies before it stand, since those
        commands ran."""
        proto = await self._ready()
        replies = await asyncio.gather(*(proto.request(_pack(tuple(c))) for c in commands), return_exceptions=True)
        for index, reply in enumerate(replies):
            if isinstance(reply, rx.ReadOnlyError):
                refused = self._not_primary(proto, reply)
                if isinstance(refused, CommandNotSent):
                    replies[index:] = [refused] * (len(replies) - index)
                break
        return replies

    async def _ready(self) -> _Protocol:
        """The open connection of this event loop, opened (again) if need be."""
        proto = self._proto
        if proto is None or proto.loop is not asyncio.get_running_loop() or not proto.is_open():
            try:
                proto = await self._connection()
            except rx.AuthenticationError:
                raise
            except (rx.ConnectionError, OSError, TimeoutError) as err:
                raise CommandNotSent(f"{err} The command was not sent.") from err
        return proto

    def _not_primary(self, proto: _Protocol, err: rx.ReadOnlyError) -> rx.RedisError:
        """A write refused by a replica: behind Sentinel, the primary moved; the connection is
        closed so that the next command asks the Sentinels again. The refused command did not run."""
        if self.address.sentinel is None:
            return err
        if proto.transport is not None:
            proto.transport.close()
        return CommandNotSent(f"{err} (the primary moved; the command did not run)")

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._opening is None or self._opening.get_loop() is not loop or self._opening.done():
            self._opening = loop.create_task(_open(self.address))
        try:
            proto = await asyncio.shield(self._opening)
        except BaseException:
            self._opening = None
            raise
        self._proto = proto
        return proto

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is None or proto.transport is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if proto.loop is running and not proto.closed.done():
            proto.transport.close()
            await proto.closed


async def subscribe(
    address: Address, channels: Sequence[str], on_message: Callable[[bytes, bytes], None], *,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Listen on `channels` until the connection is lost (then raise ConnectionError) or the
    caller is cancelled; `on_message(channel, data)` runs for every published message, and
    `on_ready()` once the subscription holds (what was published before it was missed).

    A subscription waits for messages by design, so no command deadline applies; instead the
    connection is pinged once per ``address.command_timeout_s``, and one that has answered
    nothing by the next ping (neither the pong nor a message) is taken for dead."""

    def on_push(reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            on_message(reply[1], reply[2])

    proto = await _open(address)
    try:
        # SUBSCRIBE answers once per channel: the first answer goes to the waiter, the rest (and
        # every message, and the pongs) to on_push.
        proto.on_push = on_push
        await proto.request(_pack(("SUBSCRIBE", *channels)))
        if on_ready is not None:
            on_ready()
        await _watch_subscription(proto, address.command_timeout_s)
        raise rx.ConnectionError("Subscription connection closed by server.")
    finally:
        if proto.transport is not None:
            proto.transport.close()


async def _watch_subscription(proto: _Protocol, interval_s: float) -> None:
    """Return when the connection closes; raise ConnectionError when a ping went unanswered."""
    if interval_s <= 0:
        await proto.closed
        return
    ping = _pack(("PING",))
    while True:
        seen = proto.replies
        proto.transport.write(ping)  # no waiter: a subscribed connection's replies are pushes
        done, _ = await asyncio.wait([proto.closed], timeout=interval_s)
        if done:
            return
        if proto.replies == seen:
            proto.transport.abort()
            raise rx.ConnectionError(f"Subscription connection silent for {interval_s:g}s; closed.")
