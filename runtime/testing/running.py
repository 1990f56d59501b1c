"""Running one job in the test's process, the way a pool runs it: a JobContext, the execution
middleware chain as registered (``runtime.execution_middleware``), the handler under its
timeout with its arguments checked, and :func:`runtime.executor.execute` turning every way it
ends into an outcome. Failure injection is the innermost layer of that chain, so middleware
sees an injected error exactly as it would see the handler's own.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime import handlers
from runtime.context import Job, JobContext
from runtime.executor import Outcome, Terminal, execute
from runtime.handlers import Registry
from runtime.middleware import CallNext, compose

GRACE_S = 1.0  # a sync handler past its timeout, before its run counts as stuck
Injected = BaseException | type[BaseException]  # what failure injection raises


class FailureInjection:
    """Errors to raise instead of running a job type's handler: the next N runs, or every run."""

    def __init__(self) -> None:
        self._next: dict[str, collections.deque[Injected]] = collections.defaultdict(collections.deque)
        self._all: dict[str, Injected] = {}

    def fail_next(self, job_type: str, error: Injected | str) -> None:
        self._next[job_type].append(_as_error(error))

    def fail_all(self, job_type: str, error: Injected | str | None) -> None:
        """Every run of `job_type` fails with `error`; ``None`` stops it."""
        if error is None:
            self._all.pop(job_type, None)
        else:
            self._all[job_type] = _as_error(error)

    def clear(self) -> None:
        self._next.clear()
        self._all.clear()

    def take(self, job_type: str) -> Injected | None:
        queued = self._next.get(job_type)
        if queued:
            return queued.popleft()
        return self._all.get(job_type)

    async def __call__(self, ctx: JobContext, call_next: CallNext) -> Any:
        error = self.take(ctx.job.type)
        if error is not None:
            raise error
        return await call_next()

    name = "ojs_failure_injection"


def _as_error(error: Injected | str) -> Injected:
    """A message is raised as a RuntimeError; an exception class is raised as `raise` would."""
    return RuntimeError(error) if isinstance(error, str) else error


class JobRunner:
    """Runs jobs in this process; one thread pool for the sync handlers of one test context."""

    def __init__(self, injection: FailureInjection) -> None:
        self.injection = injection
        self._threads: ThreadPoolExecutor | None = None

    def context(self, job: Job, **kwargs: Any) -> JobContext:
        spec = handlers.registered(job.type)
        timeout_s = job.timeout_ms / 1000 if job.timeout_ms else (spec.timeout_s if spec else None)
        return JobContext(job, timeout_s=timeout_s, **kwargs)

    async def run(self, ctx: JobContext) -> Outcome:
        spec = handlers.registered(ctx.job.type)
        known = {spec.job_type: spec} if spec is not None else {}
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ojs-test-job")
        terminal = Terminal(Registry(module="runtime.testing", handlers=known), threads=self._threads, grace_s=GRACE_S)
        # Iterating the chain does not freeze it: the test may still add middleware after this.
        chain = compose([*handlers.execution_middleware, self.injection], terminal)
        return await execute(ctx, chain, known)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
