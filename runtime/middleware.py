"""Middleware: onion-shaped chains composed once, and lifecycle observers.

Execution middleware wraps the handler (OJS middleware spec §4): ``async def mw(ctx, call_next)``
runs code before ``await call_next()``, after it, or around it (``try``/``finally``, a timeout
scope), and may skip it to short-circuit the handler. The first middleware added is the
outermost. Errors propagate outward; ``Retry``, ``Discard`` and ``asyncio.CancelledError`` are
ordinary exceptions here, so they pass through any middleware that does not catch them.

Enqueue middleware (used by :class:`runtime.client.Client`) has the same shape over a
:class:`runtime.client.Draft`: it returns the draft to insert, possibly modified, or ``None`` to
drop the job silently.

Chains support the spec's management operations (``add``, ``prepend``, ``insert_before``,
``insert_after``, ``remove``). Identity, for the last three: the middleware object itself, or its
class, or its name (the ``name`` attribute if it has one, else ``__name__`` of a function or the
class name). A chain is frozen when a worker boots; changing it afterwards raises.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

C = TypeVar("C")
M = TypeVar("M")

CallNext = Callable[[], Awaitable[Any]]
Layer = Callable[[C, CallNext], Awaitable[Any]]
Terminal = Callable[[C], Awaitable[Any]]


class MiddlewareError(RuntimeError):
    """A middleware broke the chain contract (e.g. called ``call_next`` twice)."""


class Middleware(Protocol):
    """Execution middleware: ``async def __call__(self, ctx, call_next) -> result``."""

    async def __call__(self, ctx: Any, call_next: CallNext) -> Any: ...


class Observer:
    """Worker lifecycle hooks. Every method is a no-op; override the ones you need. A failing
    hook is logged with the observer's repr and otherwise ignored."""

    def on_worker_boot(self, worker_id: str) -> None:
        """Called in each pool process once it is connected, before the first fetch."""

    def on_worker_shutdown(self, worker_id: str) -> None:
        """Called in each pool process after its last job is settled, before it exits."""


def compose(stack: Sequence[Layer[C]], terminal: Terminal[C]) -> Terminal[C]:
    """Build the onion once: ``stack[0](ctx, -> stack[1](ctx, -> ... terminal(ctx)))``."""
    return functools.reduce(_wrap, reversed(stack), terminal)


def _wrap(inner: Terminal[C], layer: Layer[C]) -> Terminal[C]:
    async def call(ctx: C) -> Any:
        called = False

        async def call_next() -> Any:
            nonlocal called
            if called:
                raise MiddlewareError(f"{_name(layer)} called call_next more than once")
            called = True
            return await inner(ctx)

        return await layer(ctx, call_next)

    return call


def notify(observers: Sequence[Observer], hook: str, worker_id: str) -> None:
    """Run one lifecycle hook on every observer; failures are logged, never raised."""
    for observer in observers:
        try:
            getattr(observer, hook)(worker_id)
        except Exception:
            logger.exception("observer %r failed in %s", observer, hook)


def _name(entry: object) -> str:
    name = getattr(entry, "name", None)
    if isinstance(name, str):
        return name
    return str(getattr(entry, "__name__", type(entry).__name__))


def _matches(entry: object, key: object) -> bool:
    if entry is key:
        return True
    if isinstance(key, type):
        return type(entry) is key
    return isinstance(key, str) and _name(entry) == key


class Chain(Generic[M]):
    """An ordered, freezable list of middleware (or observers). ``add`` returns its argument,
    so ``@chain.add`` works as a decorator."""

    def __init__(self, entries: Sequence[M] = ()) -> None:
        self._entries: list[M] = list(entries)
        self._frozen = False

    def add(self, entry: M) -> M:
        self._check()
        self._entries.append(entry)
        return entry

    def prepend(self, entry: M) -> M:
        self._check()
        self._entries.insert(0, entry)
        return entry

    def insert_before(self, existing: object, entry: M) -> M:
        self._check()
        self._entries.insert(self._index(existing), entry)
        return entry

    def insert_after(self, existing: object, entry: M) -> M:
        self._check()
        self._entries.insert(self._index(existing) + 1, entry)
        return entry

    def remove(self, existing: object) -> None:
        """Remove the first entry that matches `existing` (object, class or name)."""
        self._check()
        del self._entries[self._index(existing)]

    def freeze(self) -> tuple[M, ...]:
        self._frozen = True
        return tuple(self._entries)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def names(self) -> list[str]:
        """Inspection: the entries' names, outermost first."""
        return [_name(entry) for entry in self._entries]

    def __iter__(self) -> Iterator[M]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def _index(self, existing: object) -> int:
        for index, entry in enumerate(self._entries):
            if _matches(entry, existing):
                return index
        raise ValueError(f"{existing!r} is not in the chain {self.names()}")

    def _check(self) -> None:
        if self._frozen:
            raise MiddlewareError("the chain is frozen: change it before the worker starts")
