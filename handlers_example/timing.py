"""An execution middleware: it wraps every handler call (onion model, the first registered is
the outermost) and logs how long the job took and how it ended."""

from __future__ import annotations

import time
from typing import Any

from runtime import CallNext, JobContext, execution_middleware


@execution_middleware.add
async def timing(ctx: JobContext, call_next: CallNext) -> Any:
    started = time.perf_counter()
    outcome = "failed"
    try:
        result = await call_next()
        outcome = "completed"
        return result
    finally:
        ctx.logger.info("%s attempt %d %s in %.1f ms", ctx.job.type, ctx.attempt, outcome,
                        (time.perf_counter() - started) * 1000)
