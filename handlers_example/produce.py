"""Enqueue a few example jobs: ``python -m handlers_example.produce [REDIS_URL]``.

Without a URL it uses ``OJS_REDIS_URL`` / ``REDIS_URL``, else the embedded Redis that ``make run``
(``ojs-run handlers_example``) started, which publishes its URL in its data directory. Or enqueue
over HTTP instead:
``curl -s -X POST localhost:8080/ojs/v1/jobs -d '{"type":"email.send","args":["a@example.com","Hi"]}'``.
"""

from __future__ import annotations

import asyncio
import sys

import handlers_example  # noqa: F401  (registers the handlers: their queues become the defaults)
from runtime import Client, Draft
from runtime.embedded_redis import EmbeddedRedisError


async def main(redis_url: str | None = None) -> None:
    async with Client(redis_url) as client:
        ids = await client.enqueue_many([
            Draft(type="email.send", args=["ada@example.com", "Welcome"]),
            Draft(type="report.build", args=["2024-06-01"]),
            Draft(type="video.transcode", args=["v-42"]),
            Draft(type="webhook.deliver", args=["https://example.com/hook", {"event": "signup"}]),
            Draft(type="webhook.deliver", args=["https://example.com/busy", {"event": "signup"}, 0]),
            Draft(type="webhook.deliver", args=["https://example.com/gone", {"event": "signup"}]),
        ])
        for job_id in ids:
            print(job_id)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
    except EmbeddedRedisError as err:  # nothing runs to enqueue into: say so in one line
        sys.exit(f"handlers_example.produce: {err}")
