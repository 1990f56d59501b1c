"""``video.transcode``: a long job that reports progress and resumes from its last checkpoint.

Progress shows up on ``GET /ojs/v1/jobs/{id}`` and ``GET /ojs/v1/jobs/{id}/progress``. Writes are
throttled to one per second per job (the latest value always wins, and the last one is written
when the handler returns), so calling ``ctx.progress`` in a tight loop is fine.
"""

from __future__ import annotations

import asyncio

from runtime import JobContext, handler

SEGMENTS = 20


@handler("video.transcode", queue="media", timeout_s=600)
async def transcode(ctx: JobContext, video_id: str, segments: int = SEGMENTS) -> dict[str, object]:
    start = int((ctx.last_checkpoint or {}).get("segment", 0))  # set if an earlier attempt failed
    for segment in range(start, segments):
        await asyncio.sleep(0.1)  # stands in for encoding one segment
        await ctx.progress((segment + 1) / segments, f"segment {segment + 1}/{segments}",
                           {"video_id": video_id}, checkpoint={"segment": segment + 1})
    return {"video_id": video_id, "segments": segments, "resumed_from": start}
