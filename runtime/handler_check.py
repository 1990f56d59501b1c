"""`ojs-run --check MODULE`: import the handlers module as a pool would, list what it registers,
and say what would go wrong in production: a duplicate job type (refused at import), a handler
that cannot take its ``ctx``, a queue in ``--queues`` that no handler names."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import TextIO

from runtime.handlers import HandlerSpec, ModuleImportError, Registry, load, takes_context


def check(module: str, queues: Sequence[tuple[str, int]] = (), *, out: TextIO = sys.stdout,
          err: TextIO = sys.stderr) -> int:
    """Print the listing to `out` and the problems to `err`; the exit code: 0 when there are none."""
    try:
        registry = load(module)
    except ModuleImportError as error:
        print(f"ojs-run: {error}", file=err)
        return 1
    for line in describe(registry, queues):
        print(line, file=out)
    found = problems(registry, queues)
    for problem in found:
        print(f"ojs-run: {problem}", file=err)
    return 1 if found else 0


def describe(registry: Registry, queues: Sequence[tuple[str, int]] = ()) -> list[str]:
    specs = list(registry.handlers.values())
    lines = [f"{registry.module}: {len(specs)} handler(s)"]
    width = max((len(spec.job_type) for spec in specs), default=0)
    for spec in specs:
        lines.append(f"  {spec.job_type:<{width}}  {_options(spec)}  {_signature(spec)}")
    served = queues or [(name, 1) for name in registry.queues()]
    lines.append("queues: " + ", ".join(f"{name}:{weight}" for name, weight in served))
    names = {name for name, _weight in served}
    for spec in specs:
        if spec.queue and spec.queue not in names:
            lines.append(f"note: {spec.job_type} enqueues to {spec.queue!r}, which --queues leaves out: "
                         "its jobs are not served here")
    if registry.middleware:
        lines.append(f"execution middleware: {', '.join(_name(m) for m in registry.middleware)}")
    return lines


def problems(registry: Registry, queues: Sequence[tuple[str, int]] = ()) -> list[str]:
    found = [
        f"{spec.job_type}: the handler {_name(spec.fn)} takes no ctx (its jobs are called as fn(ctx, *args))"
        for spec in registry.handlers.values() if not takes_context(spec.fn)
    ]
    known = set(registry.queues())
    for name, _weight in queues:
        if name not in known:
            found.append(f"--queues names {name!r}, which no handler names (known: {', '.join(registry.queues())})")
    return found


def _options(spec: HandlerSpec) -> str:
    parts = ["async" if spec.is_async else "sync", f"queue={spec.queue or '(any)'}"]
    if spec.timeout_s is not None:
        parts.append(f"timeout_s={spec.timeout_s:g}")
    if spec.concurrency is not None:
        parts.append(f"concurrency={spec.concurrency}")
    if spec.retry:
        parts.append(f"retry={spec.retry}")
    return " ".join(parts)


def _signature(spec: HandlerSpec) -> str:
    """The signature a job's args bind to: ctx left out."""
    try:
        signature = inspect.signature(spec.fn, eval_str=True)
    except (NameError, SyntaxError):  # an annotation that only a type checker can resolve
        signature = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return f"{_name(spec.fn)}(...)"
    params = list(signature.parameters.values())
    if takes_context(spec.fn) and params and params[0].kind is not inspect.Parameter.VAR_POSITIONAL:
        params = params[1:]
    return f"{_name(spec.fn)}{signature.replace(parameters=params)}"


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
