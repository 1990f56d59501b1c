"""``webhook.deliver``: a handler that fails, and how failures are retried.

Raising any exception nacks the job with the exception's type, message and traceback; the job's
retry policy (here: 5 attempts, exponential backoff from 1 s) decides what happens next. A handler
can also decide itself: ``Retry(delay_s=...)`` asks for another attempt after a given delay (an
HTTP 429 with Retry-After), and ``Discard(reason)`` gives up at once (an HTTP 410 Gone).
"""

from __future__ import annotations

import asyncio

from runtime import Discard, JobContext, Retry, handler

RETRY_POLICY = {"max_attempts": 5, "initial_interval": "PT1S", "backoff_coefficient": 2.0}


class EndpointUnavailable(ConnectionError):
    """The receiving endpoint did not answer."""


@handler("webhook.deliver", queue="webhooks", retry=RETRY_POLICY, timeout_s=10)
async def deliver(ctx: JobContext, url: str, payload: dict[str, object], fail_attempts: int = 2) -> dict[str, object]:
    await asyncio.sleep(0.02)  # stands in for the POST
    if url.endswith("/gone"):
        raise Discard(f"{url} answered 410 Gone")
    if url.endswith("/busy") and ctx.attempt == 1:
        raise Retry("endpoint answered 429", delay_s=2)
    if ctx.attempt <= fail_attempts:
        raise EndpointUnavailable(f"{url} did not answer (attempt {ctx.attempt})")
    return {"url": url, "status": 200, "attempt": ctx.attempt}
