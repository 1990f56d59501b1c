"""The delivery loop every server process runs: fan new lifecycle events out into deliveries,
claim the due ones and send them, each attempt in a thread of its own so a slow receiver never holds
the event loop (nor any job transition, which never waits on a webhook at all).

A sender that dies mid-attempt leaves its delivery leased; when the lease ends the delivery is
claimed again (same delivery id, next attempt): receivers get at-least-once delivery and
deduplicate on ``X-OJS-Delivery-ID``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from runtime import metrics, timefmt
from runtime.broker import BACKEND_ERRORS
from runtime.broker.webhooks import Claimed, Webhooks
from runtime.config import Settings
from runtime.webhooks import sender
from runtime.webhooks.signing import signed_headers

logger = logging.getLogger(__name__)

# Retry delays in units of webhook_backoff_base_ms (30 s by default): 30 s, 2 min, 10 min, 1 h,
# 4 h, 12 h, 24 h before attempts 2..8 (ojs-webhooks.md 7.2); later attempts wait the last.
BACKOFF_STEPS = (1, 4, 20, 120, 480, 1440, 2880)
MAX_RETRY_AFTER_MS = 86_400_000
FANOUT_BATCHES_PER_STEP = 20
STOP_GRACE_S = 5.0  # in-flight attempts get this long to settle at shutdown; the rest are redelivered
MAX_ERROR_BACKOFF_S = 5.0
IDLE_SLOWDOWN = 5


def retry_delay_ms(attempt: int, base_ms: int) -> int:
    """The wait after failed attempt number `attempt` (1-based)."""
    return BACKOFF_STEPS[min(attempt, len(BACKOFF_STEPS)) - 1] * base_ms


def verdict(result: sender.Attempt, *, attempt: int, max_attempts: int) -> str:
    """delivered (2xx), dead (a client error but 429, a refused redirect, or out of attempts) or
    retry (5xx, 429, timeouts and connection errors) -- spec 7.1."""
    status = result.status
    if status is not None and 200 <= status < 300:
        return "delivered"
    if result.permanent or (status is not None and 400 <= status < 500 and status != 429):
        return "dead"
    return "dead" if attempt >= max_attempts else "retry"


def _next_attempt_ms(result: sender.Attempt, attempt: int, base_ms: int, now_ms: int) -> int:
    delay = retry_delay_ms(attempt, base_ms)
    if result.status == 429 and result.retry_after_s is not None:
        delay = min(int(result.retry_after_s * 1000), MAX_RETRY_AFTER_MS)
    return now_ms + delay


class DeliveryLoop:
    """Fan-out and delivery for one process, bounded to `webhook_concurrency` attempts at once."""

    def __init__(self, webhooks: Webhooks, settings: Settings) -> None:
        self.webhooks = webhooks
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._in_flight:
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        interval_s = self.settings.webhook_interval_ms / 1000
        backoff_s = interval_s
        while True:
            try:
                busy = await self.step()
                # Idle (nothing to send): look less often, up to IDLE_SLOWDOWN intervals apart, so
                # an idle server costs Redis a round trip or two a second, not ten.
                backoff_s = interval_s if busy else min(backoff_s * 2, interval_s * IDLE_SLOWDOWN)
            except BACKEND_ERRORS as err:
                logger.warning("webhook loop: job store unavailable (%s); retrying in %.1fs", err, backoff_s)
                backoff_s = min(backoff_s * 2, max(interval_s, MAX_ERROR_BACKOFF_S))
            except Exception:
                logger.exception("webhook loop: step failed")
                backoff_s = min(backoff_s * 2, max(interval_s, MAX_ERROR_BACKOFF_S))
            await asyncio.sleep(backoff_s)

    async def step(self) -> bool:
        """Fan out, then claim what is due. True while there is delivery work in hand, or events
        still to fan out (an idle loop slows down: a fan-out behind the stream would fall past
        its trim)."""
        behind = False
        for _ in range(FANOUT_BATCHES_PER_STEP):
            behind = await self.webhooks.fan_out()
            if not behind:
                break
        free = self.settings.webhook_concurrency - len(self._in_flight)
        if free <= 0:
            return True
        claimed_now = await self.webhooks.claim(free)
        for claimed in claimed_now:
            task = asyncio.create_task(self._deliver(claimed))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return bool(claimed_now or self._in_flight or behind)

    async def _deliver(self, claimed: Claimed) -> None:
        try:
            await self._attempt(claimed)
        except Exception:
            # Unrecorded: its lease ends and it is sent again.
            logger.exception("webhook delivery %s: attempt %s failed", claimed.id, claimed.attempt)

    async def _attempt(self, claimed: Claimed) -> None:
        timestamp = int(time.time())
        headers = signed_headers(subscription_id=claimed.subscription_id, delivery_id=claimed.id,
                                 event_type=claimed.event_type, secrets_in_use=claimed.secrets,
                                 body=claimed.body, timestamp=timestamp)
        result = await sender.send(claimed.url, claimed.body, headers, timeout_s=self.settings.webhook_timeout_ms / 1000)
        outcome = verdict(result, attempt=claimed.attempt, max_attempts=self.settings.webhook_max_attempts)
        metrics.WEBHOOK_ATTEMPTS.labels(claimed.event_type, outcome).inc()
        metrics.WEBHOOK_DURATION.labels(outcome).observe(result.duration_ms / 1000)
        now = timefmt.now_ms()
        next_ms = (_next_attempt_ms(result, claimed.attempt, self.settings.webhook_backoff_base_ms, now)
                   if outcome == "retry" else None)
        entry = _log_entry(claimed, result, outcome, now, next_ms)
        try:
            disabled = await self.webhooks.settle(claimed, verdict=outcome, next_ms=next_ms, entry=entry,
                                                  status=result.status, error=result.error)
        except BACKEND_ERRORS as err:
            # Its lease ends and it is sent again: at-least-once, never lost.
            logger.warning("webhook delivery %s: outcome not recorded (%s); it will be redelivered", claimed.id, err)
            return
        if disabled is None:
            logger.info("webhook delivery %s: attempt %s settled after its lease ended; ignored",
                        claimed.id, claimed.attempt)
        elif disabled:
            logger.warning("webhook subscription %s disabled after repeated failed deliveries (last: %s)",
                           claimed.subscription_id, result.error or result.status)


def _log_entry(claimed: Claimed, result: sender.Attempt, outcome: str, now_ms: int,
               next_ms: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "delivery_id": claimed.id, "subscription_id": claimed.subscription_id, "event_type": claimed.event_type,
        "attempt": claimed.attempt, "outcome": outcome, "status_code": result.status, "error": result.error,
        "duration_ms": result.duration_ms, "response_body": result.response_body,
        "attempted_at": timefmt.format_ms(now_ms),
    }
    if next_ms is not None:
        entry["next_attempt_at"] = timefmt.format_ms(next_ms)
    return entry
