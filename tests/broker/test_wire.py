"""The lean pipelined connection (runtime/broker/wire.py) against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis import exceptions as rx
from redis.asyncio import Redis

from runtime.broker.scripts import LIBRARY_NAME, TRANSITIONS, Scripts
from runtime.broker.wire import Address, Wire, subscribe
from runtime.embedded_redis import EmbeddedRedis
from tests.fixtures.ports import free_port


def test_address_from_urls() -> None:
    a = Address.from_url("redis://user:p%40ss@10.0.0.5:6390/4")
    assert a is not None
    assert (a.host, a.port, a.db, a.username, a.password, a.path) == ("10.0.0.5", 6390, 4, "user", "p@ss", "")
    u = Address.from_url("unix:///run/redis.sock?db=3")
    assert u is not None and (u.path, u.db) == ("/run/redis.sock", 3)
    t = Address.from_url("rediss://example:6380/0")  # TLS: the lean connection wraps its socket
    assert t is not None and t.tls is not None and (t.host, t.port, t.path) == ("example", 6380, "")


def test_address_of_a_redis_py_client(redis_url: str) -> None:
    a = Address.of_client(Redis.from_url(redis_url))
    b = Address.from_url(redis_url)
    assert a is not None and b is not None
    assert (a.host, a.port, a.db) == (b.host, b.port, b.db)
    t = Address.of_client(Redis.from_url("rediss://example:6380/0"))
    assert t is not None and t.tls is not None and (t.host, t.port) == ("example", 6380)


def test_concurrent_commands_share_one_socket_and_keep_their_replies(redis_url: str) -> None:
    async def go() -> tuple[list[Any], set[int]]:
        wire = Wire.from_url(redis_url)
        try:
            replies = await asyncio.gather(*(wire.execute("INCRBY", "wire:n", i) for i in range(1, 201)))
            ids = await asyncio.gather(*(wire.execute("CLIENT", "ID") for _ in range(20)))
            return replies, set(ids)
        finally:
            await wire.close()

    replies, connection_ids = asyncio.run(go())
    # The increments ran in the order sent, each caller got its own running total.
    assert replies == [sum(range(1, i + 1)) for i in range(1, 201)]
    assert len(connection_ids) == 1


def test_errors_are_redis_py_exceptions_and_do_not_break_the_stream(redis_url: str) -> None:
    async def go() -> list[Any]:
        wire = Wire.from_url(redis_url)
        try:
            await wire.execute("SET", "wire:s", "text")
            commands = [("GET", "wire:s"), ("INCR", "wire:s"), ("EVALSHA", "0" * 40, 0), ("GET", "wire:s")]
            return await asyncio.gather(*(wire.execute(*c) for c in commands), return_exceptions=True)
        finally:
            await wire.close()

    got, overflow, noscript, again = asyncio.run(go())
    assert got == b"text" and again == b"text"
    assert type(overflow) is rx.ResponseError and "not an integer" in str(overflow)
    assert isinstance(noscript, rx.NoScriptError)


def test_a_cancelled_caller_does_not_shift_the_replies(redis_url: str) -> None:
    async def go() -> tuple[Any, Any]:
        wire = Wire.from_url(redis_url)
        try:
            await wire.execute("DEL", "wire:list")
            slow = asyncio.ensure_future(wire.execute("BLPOP", "wire:list", 0.2))
            after = asyncio.ensure_future(wire.execute("ECHO", "after"))
            await asyncio.sleep(0.01)
            slow.cancel()
            return await after, await wire.execute("ECHO", "next")
        finally:
            await wire.close()

    assert asyncio.run(go()) == (b"after", b"next")


def test_reconnects_after_the_server_restarts(make_embedded_redis: Callable[..., EmbeddedRedis]) -> None:
    server = make_embedded_redis(persistence=False, port=free_port())  # this worker's own: kept while down
    url = server.start()
    port, password = server.port, server.password

    async def go() -> Any:
        wire = Wire.from_url(url)
        try:
            await wire.execute("SET", "k", "1")
            old = wire._proto
            assert old is not None
            server.stop()
            again = make_embedded_redis(persistence=False, port=port, password=password)
            again.start()
            await asyncio.wait_for(old.closed, 5)  # the old socket's close has reached the loop
            return await wire.execute("INCR", "k")  # a fresh server: the key is gone
        finally:
            await wire.close()

    assert asyncio.run(go()) == 1


def test_in_flight_commands_fail_with_connection_error_when_the_server_goes(
    make_embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    server = make_embedded_redis(persistence=False)
    url = server.start()

    async def go() -> BaseException | None:
        wire = Wire.from_url(url)
        try:
            pending = asyncio.ensure_future(wire.execute("BLPOP", "nothing", 0))
            probe = Wire.from_url(url)
            async with asyncio.timeout(5):  # the BLPOP has reached the server and blocks there
                while b"blocked_clients:1" not in await probe.execute("INFO", "clients"):
                    await asyncio.sleep(0.01)
            await probe.close()
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            try:
                await asyncio.wait_for(pending, 5)
            except Exception as err:
                return err
            return None
        finally:
            await wire.close()

    assert isinstance(asyncio.run(go()), rx.ConnectionError)


def test_unreachable_server_is_a_connection_error() -> None:
    async def go() -> Any:
        return await Wire(Address(host="127.0.0.1", port=1)).execute("PING")

    with pytest.raises(rx.ConnectionError):
        asyncio.run(go())


def test_subscribe_delivers_messages_after_ready(redis_url: str, redis_client: redis.Redis) -> None:
    address = Address.from_url(redis_url)
    assert address is not None

    async def go() -> list[tuple[bytes, bytes]]:
        got: list[tuple[bytes, bytes]] = []
        ready = asyncio.Event()
        done = asyncio.Event()

        def on_message(channel: bytes, data: bytes) -> None:
            got.append((channel, data))
            if len(got) == 3:
                done.set()

        task = asyncio.ensure_future(subscribe(address, ["wire:a", "wire:b"], on_message, on_ready=ready.set))
        await asyncio.wait_for(ready.wait(), 5)
        for channel, data in (("wire:a", "1"), ("wire:c", "x"), ("wire:b", "2"), ("wire:a", "3")):
            redis_client.publish(channel, data)
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return got

    assert asyncio.run(go()) == [(b"wire:a", b"1"), (b"wire:b", b"2"), (b"wire:a", b"3")]


def test_functions_load_themselves_after_a_function_flush(redis_url: str, redis_client: redis.Redis) -> None:
    async def go() -> Any:
        client = Redis.from_url(redis_url)
        scripts = Scripts(client)
        try:
            assert scripts.wire is not None
            first = await scripts.call("advance", keys=["{t}:", "{t}:workflow-outbox"], args=["0", "0", "10", "100"])
            redis_client.function_flush()
            again = await scripts.call("advance", keys=["{t}:", "{t}:workflow-outbox"], args=["0", "0", "10", "100"])
            return first, again
        finally:
            await scripts.close()
            await client.aclose()

    assert asyncio.run(go()) == (0, 0)
    assert "advance" in TRANSITIONS
    assert LIBRARY_NAME.encode() in [lib[1] for lib in redis_client.function_list()]
