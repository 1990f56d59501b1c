"""The client a task handle enqueues through, when the caller does not name one.

``send_email.enqueue(...)`` uses, in this order:

1. the client set for the current context by ``with runtime.using_client(client):`` (a contextvar:
   it follows asyncio tasks, and does not leak into other threads or concurrent tests). Any object
   with ``async enqueue_job(type, args, **options)`` will do, e.g. a testing kit's fake; what it
   returns is the handle the caller gets (``id``, ``async status()``, ``async result(timeout)``,
   as :class:`~runtime.job_handle.JobHandle` has);
2. else the default client of the running event loop, made on first use as ``Client()`` makes one
   (``OJS_REDIS_URL`` / ``REDIS_URL``, else the running embedded Redis) or as set by
   ``runtime.configure(redis_url=..., settings=...)``. One per event loop, because a Redis
   connection belongs to the loop it was opened on; ``await runtime.close_default_client()``
   closes the running loop's one (a process that simply exits needs not).

The sync variants (``enqueue_sync``, and the handles they return) run on one private event loop in
a daemon thread, with that loop's own default client, so they work from any thread, with or
without an event loop of its own (a sync handler, a web request, a commit hook). A client set by
``using_client`` is used there too, so it must not be tied to another event loop.

A forked child starts afresh: it never reuses its parent's connections or thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

from runtime.client import Client
from runtime.config import Settings

T = TypeVar("T")
E = TypeVar("E")


class Enqueuer(Protocol):
    """What a task handle needs of a client."""

    async def enqueue_job(self, type: str, args: list[Any], **options: Any) -> Any: ...


class _Config:
    redis_url: str | None = None
    settings: Settings | None = None


_config = _Config()
_using: contextvars.ContextVar[Any] = contextvars.ContextVar("ojs_client", default=None)
_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def configure(*, redis_url: str | None = None, settings: Settings | None = None) -> None:
    """How default clients are made from now on; without arguments, from the environment again.
    Call it at startup: default clients made before are forgotten (the sync one is closed)."""
    _config.redis_url, _config.settings = redis_url, settings
    _per_loop.clear()
    _bridge.stop()


@contextlib.contextmanager
def using_client(client: E) -> Iterator[E]:
    """Task handles enqueue through `client` inside this block (this context only)."""
    token = _using.set(client)
    try:
        yield client
    finally:
        _using.reset(token)


def current_client() -> Any:
    """The client a handle enqueues through here: the one set by `using_client`, else the running
    loop's default client."""
    chosen = _using.get()
    return chosen if chosen is not None else default_client()


def default_client() -> Client:
    """The running event loop's default client, made on first use."""
    loop = asyncio.get_running_loop()
    with _lock:
        client = _per_loop.get(loop)
        if client is None:
            client = _per_loop[loop] = Client(_config.redis_url, settings=_config.settings)
        return client


async def close_default_client() -> None:
    """Close the running loop's default client, if one was made."""
    client = _per_loop.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` on the private loop and wait for its outcome (the sync variants)."""
    return _bridge.run(make)


class _Bridge:
    """The private event loop of the sync variants, in a daemon thread started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = self._start()
        if _running_loop() is loop:
            raise RuntimeError("a sync variant was called from the loop it runs on: await the async one")

        async def call() -> T:
            return await make()

        # The task copies the caller's context: `using_client` applies here too.
        return asyncio.run_coroutine_threadsafe(call(), loop).result()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="ojs-sync-client", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_default_client(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    def forget(self) -> None:
        """In a forked child: the thread did not come along, and its connections are the parent's."""
        self._loop = self._thread = None
        self._lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _after_fork() -> None:
    global _lock
    _per_loop.clear()
    _bridge.forget()
    _lock = threading.Lock()


_bridge = _Bridge()
atexit.register(_bridge.stop)
os.register_at_fork(after_in_child=_after_fork)
