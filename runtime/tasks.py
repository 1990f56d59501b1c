"""Typed task handles: what ``@handler`` returns.

A handle is still the handler (call it as before, same signature, same result) and it enqueues
its own jobs, with the arguments checked against the handler's signature, ``ctx`` excluded::

    @handler("email.send", queue="email")
    async def send_email(ctx: JobContext, to: str, subject: str) -> dict[str, str]: ...

    job = await send_email.enqueue("a@example.com", "Welcome")    # JobHandle[dict[str, str]]
    await job.result(timeout=10)                                    # the handler's result
    send_email.enqueue_sync("a@example.com", "Welcome")            # from synchronous code
    await send_email.options(queue="urgent", priority=5, delay=60).enqueue("a@example.com", "Hi")

The types come from ``ParamSpec``: mypy and editors reject ``send_email.enqueue(1)``. Enqueue
options go through ``.options(...)`` rather than keywords of ``enqueue`` itself: a ParamSpec
signature cannot take keywords besides the handler's (PEP 612), and a handler may well have a
parameter called ``queue``.

A job's args are positional (OJS), so keyword arguments are bound to the handler's parameters and
sent in order, with the defaults of the parameters before them filled in; a keyword-only
parameter cannot travel and is a ``TypeError`` at enqueue, as is anything that does not bind.

Where the job goes: see :mod:`runtime.default_client` (``using_client``, ``configure``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from runtime.context import JobContext
    from runtime.job_handle import JobHandle, SyncJobHandle

P = ParamSpec("P")
R = TypeVar("R")  # what calling the handler returns (a coroutine for an async handler)
T = TypeVar("T")  # the job's result: what the handler returns, awaited


class TaskOptions(Generic[P, T]):
    """A task handle with enqueue options set: ``handle.options(priority=5).enqueue(...)``."""

    __slots__ = ("_task", "_options")

    def __init__(self, task: Task[P, Any, T], options: dict[str, Any]) -> None:
        self._task, self._options = task, options

    def options(self, **more: Any) -> TaskOptions[P, T]:
        return TaskOptions(self._task, {**self._options, **_enqueue_options(**more)})

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[T]:
        return await self._task._enqueue(self._task.job_args(*args, **kwargs), self._options)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> SyncJobHandle[T]:
        return self._task._enqueue_sync(self._task.job_args(*args, **kwargs), self._options)


class Task(Generic[P, R, T]):
    """The handle of one registered handler."""

    def __init__(self, fn: Callable[Concatenate[JobContext, P], R], job_type: str) -> None:
        self.fn = fn
        self.job_type = job_type
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, ctx: JobContext, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(ctx, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.job_type} {self.fn.__module__}.{self.fn.__qualname__}>"

    def options(
        self, *, queue: str | None = None, priority: int | None = None,
        delay: float | timedelta | None = None, unique: dict[str, Any] | None = None, **more: Any,
    ) -> TaskOptions[P, T]:
        """Enqueue options: `queue`, `priority`, `delay` (seconds or a timedelta), `unique` (an OJS
        unique policy), and any other OJS option by name (`retry`, `timeout_ms`, `tags`, ...)."""
        return TaskOptions(self, _enqueue_options(queue=queue, priority=priority, delay=delay,
                                                  unique=unique, **more))

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[T]:
        """Enqueue a job for this handler; the handle waits for its result."""
        return await self._enqueue(self.job_args(*args, **kwargs), {})

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> SyncJobHandle[T]:
        """`enqueue` for synchronous callers (it blocks until the job is inserted)."""
        return self._enqueue_sync(self.job_args(*args, **kwargs), {})

    def job_args(self, *args: Any, **kwargs: Any) -> list[Any]:
        """The job's positional args for this call, or TypeError when it does not bind."""
        try:
            bound = self._signature.bind(None, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{self.job_type}: {err}") from None
        if bound.kwargs:
            bound.apply_defaults()  # the parameters before a keyword given must be sent
        if bound.kwargs:
            names = ", ".join(bound.kwargs)
            raise TypeError(f"{self.job_type}: keyword-only parameter(s) {names} cannot be sent "
                            "(a job's args are positional)")
        return list(bound.args[1:])

    async def _enqueue(self, args: list[Any], options: dict[str, Any]) -> JobHandle[T]:
        from runtime.default_client import current_client

        handle: JobHandle[T] = await current_client().enqueue_job(self.job_type, args, **options)
        return handle

    def _enqueue_sync(self, args: list[Any], options: dict[str, Any]) -> SyncJobHandle[T]:
        from runtime.default_client import run_sync
        from runtime.job_handle import SyncJobHandle

        return SyncJobHandle(run_sync(lambda: self._enqueue(args, options)), run_sync)


def _enqueue_options(
    *, queue: str | None = None, priority: int | None = None, delay: float | timedelta | None = None,
    unique: dict[str, Any] | None = None, **more: Any,
) -> dict[str, Any]:
    options: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if queue is not None:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = priority
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        options["delay_ms"] = round(seconds * 1000)
    if unique is not None:
        options["unique"] = unique
    return options


AsyncTask = Task[P, Coroutine[Any, Any, T], T]
