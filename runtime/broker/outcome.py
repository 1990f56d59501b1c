"""Whether a request that failed on the job store may have changed it: what a 503 may promise.

A request is surely without effect when the failing command never left this process
(:class:`~runtime.broker.wire.CommandNotSent`) and no script call of the same request got as far
as being sent before it. :func:`track` starts the count for the current task (an HTTP request);
:class:`~runtime.broker.scripts.Scripts` notes every call that was sent.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from runtime.broker.wire import CommandNotSent

_sent: ContextVar[bool] = ContextVar("ojs_store_commands_sent", default=False)


def track() -> Token[bool]:
    """Count from here, in this task and in what it awaits."""
    return _sent.set(False)


def untrack(token: Token[bool]) -> None:
    _sent.reset(token)


def note_sent() -> None:
    _sent.set(True)


def surely_not_run(err: BaseException) -> bool:
    """True only when nothing of the current request can have reached the store."""
    return isinstance(err, CommandNotSent) and not _sent.get()
