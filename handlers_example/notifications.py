"""``email.send``: an I/O-bound handler. Async handlers run as tasks on the pool's event loop, so
one pool process keeps many of them in flight while they wait on the network."""

from __future__ import annotations

import asyncio
import random

from runtime import JobContext, handler


@handler("email.send", queue="email", timeout_s=30)
async def send_email(ctx: JobContext, to: str, subject: str, body: str = "") -> dict[str, object]:
    await asyncio.sleep(random.uniform(0.05, 0.2))  # stands in for the SMTP round trips
    ctx.logger.info("sent %r to %s", subject, to)
    return {"delivered": True, "to": to, "message_id": f"<{ctx.job_id}@example.com>"}
