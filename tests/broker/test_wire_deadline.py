"""The lean connection's deadline and keepalive, through a proxy whose link goes silent."""

from __future__ import annotations

import asyncio
import socket

import pytest
from redis import exceptions as rx

from runtime.broker.wire import Address, OutcomeUnknown, Wire, subscribe
from tests.fixtures.tcp_proxy import FaultProxy

DEADLINE_S = 0.5


def _wire(proxy: FaultProxy) -> Wire:
    address = Address.from_url(proxy.url())
    assert address is not None
    return Wire(address.with_timeout(DEADLINE_S))


def test_a_silent_link_fails_the_waiting_commands_and_a_new_one_works(proxy: FaultProxy) -> None:
    async def go() -> None:
        wire = _wire(proxy)
        try:
            assert await wire.execute("PING") == b"PONG"
            sock = wire._proto.transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            proxy.blackhole()
            calls = [asyncio.ensure_future(wire.execute("INCR", "deadline:n")) for _ in range(3)]
            # Then: each fails within two deadlines (the test's own bound is generous), as unknown
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10 * DEADLINE_S)
            assert all(isinstance(r, OutcomeUnknown) for r in done), done
            assert "did not answer" in str(done[0])
            proxy.restore()
            assert await wire.execute("PING") == b"PONG"  # a new connection
        finally:
            await wire.close()

    asyncio.run(go())


def test_a_busy_connection_that_answers_slowly_is_not_cut(proxy: FaultProxy) -> None:
    # Replies that keep coming (each later than half a deadline) are progress: nothing expires
    async def go() -> None:
        wire = _wire(proxy)
        try:
            await wire.execute("PING")
            proxy.delay(DEADLINE_S * 0.6)
            for _ in range(4):
                assert await wire.execute("PING") == b"PONG"
        finally:
            proxy.delay(0)
            await wire.close()

    asyncio.run(go())


def test_a_silent_subscription_is_noticed(proxy: FaultProxy) -> None:
    async def go() -> None:
        address = Address.from_url(proxy.url())
        assert address is not None
        ready = asyncio.Event()
        listening = asyncio.ensure_future(subscribe(address.with_timeout(DEADLINE_S), ["deadline:ch"],
                                                    lambda _c, _d: None, on_ready=ready.set))
        await asyncio.wait_for(ready.wait(), 10)
        proxy.watch(b"PING")
        async with asyncio.timeout(10):  # pings answered: it stays subscribed through three of them
            while proxy.seen(b"PING") < 3:
                await asyncio.sleep(0.05)
                assert not listening.done()
        proxy.blackhole()
        with pytest.raises(rx.ConnectionError, match="silent"):
            await asyncio.wait_for(listening, 10 * DEADLINE_S)

    asyncio.run(go())
