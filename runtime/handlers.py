"""The handler registry: job type -> handler, the ``@handler`` decorator, and loading the module.

A handlers module registers at import time::

    from runtime import handler, execution_middleware, JobContext

    @handler("email.send", queue="email", timeout_s=30)
    async def send_email(ctx: JobContext, to: str, subject: str) -> dict: ...

    await send_email.enqueue("a@example.com", "Hi")   # the decorator returns a task handle

    @execution_middleware.add
    async def timing(ctx, call_next): ...

Each pool process imports the module itself, after the fork, so nothing a module does at import
time (a connection, a thread) is shared between processes or held by the supervisor.

The registry and the two chains are the only module globals of the runtime (conventions §3.12):
a decorator has nowhere else to put what it registers.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sysconfig
import traceback
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

import msgspec

from runtime.envelope import TYPE_PATTERN
from runtime.middleware import Chain, Middleware, Observer
from runtime.tasks import Task

if TYPE_CHECKING:
    from runtime.context import JobContext

P = ParamSpec("P")
T = TypeVar("T")

class HandlerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One registered handler and its options."""

    job_type: str
    fn: Callable[..., Any]
    is_async: bool
    queue: str | None = None  # default queue for Client.enqueue; also served when --queues is not given
    timeout_s: float | None = None  # used when the job itself sets no timeout
    retry: dict[str, Any] | None = None  # default retry policy for Client.enqueue
    concurrency: int | None = None  # most jobs of this type at once in one pool process


class Registry(msgspec.Struct, frozen=True, kw_only=True):
    """What a pool process serves: a snapshot taken after importing the handlers module."""

    module: str
    handlers: Mapping[str, HandlerSpec]
    middleware: tuple[Middleware, ...] = ()
    observers: tuple[Observer, ...] = ()

    def queues(self) -> list[str]:
        """The queues named by handlers, in registration order, then ``default``."""
        names = [spec.queue for spec in self.handlers.values() if spec.queue]
        return list(dict.fromkeys([*names, "default"]))


_HANDLERS: dict[str, HandlerSpec] = {}
_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple(dict.fromkeys(
    os.path.abspath(sysconfig.get_paths()[name]) + os.sep for name in ("stdlib", "platstdlib", "purelib", "platlib")
))
execution_middleware: Chain[Middleware] = Chain()
observers: Chain[Observer] = Chain()


class HandlerError(ValueError):
    """A handler registration is invalid."""


class ModuleImportError(Exception):
    """The handlers module does not import; the message says why and where, in one line."""


class _Register:
    """What ``handler(...)`` returns: registers the function it is applied to, returns its
    :class:`~runtime.tasks.Task` handle (typed from the function's signature, ``ctx`` excluded)."""

    def __init__(self, register: Callable[[Callable[..., Any]], Task[Any, Any, Any]]) -> None:
        self._register = register

    @overload
    def __call__(  # an async function is matched first
        self, fn: Callable[Concatenate[JobContext, P], Coroutine[Any, Any, T]],
    ) -> Task[P, Coroutine[Any, Any, T], T]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[JobContext, P], T]) -> Task[P, T, T]: ...

    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any, Any]:
        return self._register(fn)


def handler(
    job_type: str, *, queue: str | None = None, timeout_s: float | None = None,
    retry: dict[str, Any] | None = None, concurrency: int | None = None,
) -> _Register:
    """Register `fn(ctx, *args)` for jobs of `job_type`. Async functions run as tasks on the pool's
    event loop; plain functions run in the pool's thread pool. Returns the function's task handle:
    callable as the function, plus ``enqueue`` (see :mod:`runtime.tasks`)."""
    if not re.fullmatch(TYPE_PATTERN, job_type):
        raise HandlerError(f"invalid job type {job_type!r} (dot-separated lowercase segments)")
    if timeout_s is not None and timeout_s <= 0:
        raise HandlerError(f"{job_type}: timeout_s must be positive")
    if concurrency is not None and concurrency < 1:
        raise HandlerError(f"{job_type}: concurrency must be at least 1")

    def register(fn: Callable[..., Any]) -> Task[Any, Any, Any]:
        if isinstance(fn, Task):  # applied to a handle: register what it wraps
            fn = fn.fn
        if job_type in _HANDLERS and _HANDLERS[job_type].fn is not fn:
            raise HandlerError(f"a handler for {job_type!r} is registered already")
        _HANDLERS[job_type] = HandlerSpec(
            job_type=job_type, fn=fn, is_async=inspect.iscoroutinefunction(fn), queue=queue,
            timeout_s=timeout_s, retry=retry, concurrency=concurrency,
        )
        return Task(fn, job_type)

    return _Register(register)


def registered(job_type: str) -> HandlerSpec | None:
    """The handler registered for `job_type` in this process, if any (the client's defaults)."""
    return _HANDLERS.get(job_type)


def load(module: str) -> Registry:
    """Import the handlers module and freeze what it registered. An import that fails raises
    :class:`ModuleImportError`: the caller turns it into a boot error."""
    try:
        importlib.import_module(module)
    except Exception as err:
        raise ModuleImportError(f"cannot import the handlers module {module!r}: {describe_error(err)}") from err
    return snapshot(module)


def describe_error(err: BaseException) -> str:
    """``Type: message (at file:line)``: the innermost line of the application's own code that
    the error went through (not the import machinery, the runtime, the standard library or an
    installed package, unless nothing else is left). A syntax error is located where Python
    reports it."""
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, SyntaxError) and err.filename:
        return f"{type(err).__name__}: {err.msg} (at {err.filename}:{err.lineno})"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(("<", _RUNTIME_DIR)) and f.filename != importlib.__file__]
    own = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)] or frames
    if own:
        return f"{text} (at {own[-1].filename}:{own[-1].lineno})"
    return text


def takes_context(fn: Callable[..., Any]) -> bool:
    """Whether `fn` can be called as ``fn(ctx, *args)``: it has a positional first parameter (or
    ``*args``). A callable whose signature cannot be read is given the benefit of the doubt."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    return bool(params) and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL,
    )


def snapshot(module: str = "") -> Registry:
    return Registry(
        module=module, handlers=dict(_HANDLERS),
        middleware=execution_middleware.freeze(), observers=observers.freeze(),
    )
