"""``report.build``: a CPU-bound handler. A plain (sync) function runs in the pool's thread pool,
off the event loop, so the pool keeps heartbeating and fetching while it computes. For real
parallelism across cores, run more pool processes (``--processes``)."""

from __future__ import annotations

import hashlib

from runtime import JobContext, handler


@handler("report.build", queue="reports", timeout_s=120)
def build_report(ctx: JobContext, day: str, rows: int = 200_000) -> dict[str, object]:
    digest = hashlib.sha256(day.encode())
    for row in range(rows):
        if row % 50_000 == 0 and ctx.cancelled:  # a sync handler polls for cancellation
            raise RuntimeError("report cancelled")
        digest.update(row.to_bytes(8, "little"))
    return {"day": day, "rows": rows, "checksum": digest.hexdigest()}
