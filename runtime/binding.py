"""Whether a job's args fit its handler's parameters, checked before the handler runs.

Args are passed positionally after ``ctx``, so whether they bind depends on their count alone:
:meth:`inspect.Signature.bind` runs once per handler and count, and a job pays a dict lookup. A
job whose args do not bind can never succeed, whatever its retry policy says, so the executor
fails it once, non-retryably (error type ``invalid_arguments``), instead of letting each attempt
end in the same ``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

MEMO_COUNTS = 64  # counts remembered per handler; a job with more args than this is bound afresh


class InvalidArguments(Exception):
    """A job's args do not bind to its handler's parameters; retrying cannot help."""

    retryable = False


class ArgumentCheck:
    """The binding check of one handler: ``problem(args)`` says what does not bind, or None."""

    def __init__(self, job_type: str, fn: Callable[..., Any]) -> None:
        self._job_type = job_type
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # no introspectable signature: leave it to the call
            self._signature = None
        self._by_count: dict[int, str | None] = {}

    def check(self, args: Sequence[Any]) -> None:
        """Raise :class:`InvalidArguments` when `args` (ctx excluded) do not bind."""
        count = len(args)
        try:
            problem = self._by_count[count]
        except KeyError:
            problem = self._bind(count)
            if count <= MEMO_COUNTS:
                self._by_count[count] = problem
        if problem is not None:
            raise InvalidArguments(problem)

    def _bind(self, count: int) -> str | None:
        if self._signature is None:
            return None
        try:
            self._signature.bind(None, *range(count))  # None stands for ctx
        except TypeError as err:
            return (f"{self._job_type} takes {_parameters(self._signature)}, got {count} "
                    f"arg{'' if count == 1 else 's'}: {err}")
        return None


def _parameters(signature: inspect.Signature) -> str:
    """The handler's parameters after ctx, without annotations: ``(to, subject, body='')``."""
    params = list(signature.parameters.values())[1:]
    return str(inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in params]))
