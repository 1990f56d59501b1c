"""Middleware composition and chain management (runtime.middleware): pure, no Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.middleware import CallNext, Chain, MiddlewareError, compose


def recorder(name: str, trace: list[str]) -> Any:
    async def mw(ctx: list[str], call_next: CallNext) -> Any:
        trace.append(f"{name}:before")
        try:
            return await call_next()
        finally:
            trace.append(f"{name}:after")

    mw.__name__ = name
    return mw


def test_compose_is_an_onion_first_added_outermost() -> None:
    # Given
    trace: list[str] = []

    async def handler(ctx: list[str]) -> str:
        trace.append("handler")
        return "result"

    chain = compose([recorder("a", trace), recorder("b", trace), recorder("c", trace)], handler)
    # When
    result = asyncio.run(chain([]))
    # Then
    assert result == "result"
    assert trace == ["a:before", "b:before", "c:before", "handler", "c:after", "b:after", "a:after"]


def test_compose_empty_chain_calls_the_handler_directly() -> None:
    async def handler(ctx: int) -> int:
        return ctx * 2

    assert asyncio.run(compose([], handler)(21)) == 42


def test_compose_middleware_can_short_circuit() -> None:
    async def cached(ctx: object, call_next: CallNext) -> str:
        return "from cache"

    async def handler(ctx: object) -> str:
        raise AssertionError("must not run")

    assert asyncio.run(compose([cached], handler)(None)) == "from cache"


def test_compose_errors_propagate_outward_through_every_layer() -> None:
    seen: list[str] = []

    def observing(name: str) -> Any:
        async def mw(ctx: object, call_next: CallNext) -> Any:
            try:
                return await call_next()
            except KeyError as err:
                seen.append(f"{name}:{err.args[0]}")
                raise

        return mw

    async def handler(ctx: object) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        asyncio.run(compose([observing("outer"), observing("inner")], handler)(None))
    assert seen == ["inner:boom", "outer:boom"]


def test_compose_middleware_can_transform_the_result() -> None:
    async def double(ctx: object, call_next: CallNext) -> int:
        return 2 * await call_next()

    async def handler(ctx: object) -> int:
        return 5

    assert asyncio.run(compose([double, double], handler)(None)) == 20


def test_compose_rejects_a_second_call_next() -> None:
    async def twice(ctx: object, call_next: CallNext) -> Any:
        await call_next()
        return await call_next()

    async def handler(ctx: object) -> int:
        return 1

    with pytest.raises(MiddlewareError, match="more than once"):
        asyncio.run(compose([twice], handler)(None))


def test_compose_is_built_once_and_reusable() -> None:
    calls: list[int] = []

    async def handler(ctx: int) -> int:
        calls.append(ctx)
        return ctx

    chain = compose([recorder("a", [])], handler)
    assert [asyncio.run(chain(n)) for n in range(3)] == [0, 1, 2]
    assert calls == [0, 1, 2]


class Tagged:
    name = "tagged"

    async def __call__(self, ctx: object, call_next: CallNext) -> Any:
        return await call_next()


def test_chain_management_operations_keep_the_documented_order() -> None:
    trace: list[str] = []
    a, b, c, d = (recorder(n, trace) for n in "abcd")
    chain: Chain[Any] = Chain()
    chain.add(b)
    chain.prepend(a)
    chain.add(d)
    chain.insert_before(d, c)  # by object
    tagged = chain.insert_after("b", Tagged())  # by name
    assert chain.names() == ["a", "b", "tagged", "c", "d"]
    chain.remove(Tagged)  # by class
    chain.remove("d")
    assert chain.names() == ["a", "b", "c"]
    assert tagged not in list(chain)


def test_chain_allows_duplicates_and_add_works_as_a_decorator() -> None:
    chain: Chain[Any] = Chain()

    @chain.add
    async def log(ctx: object, call_next: CallNext) -> Any:
        return await call_next()

    chain.add(log)
    assert chain.names() == ["log", "log"]
    assert len(chain) == 2


def test_chain_is_frozen_once_a_worker_takes_it() -> None:
    chain: Chain[Any] = Chain([Tagged()])
    assert len(chain.freeze()) == 1
    with pytest.raises(MiddlewareError, match="frozen"):
        chain.add(Tagged())


def test_chain_unknown_entry_is_an_error() -> None:
    with pytest.raises(ValueError):
        Chain[Any]().remove("missing")
