"""Whether a pool process reaches Redis, judged from the outcomes of the calls it makes anyway
(no probe of its own): one warning when an outage begins and one line when it ends (never one per
failed call), the ``ojs_redis_up`` gauge, and the shared :class:`~runtime.liveness.Board`, so
``/ready`` says the runtime is not ready while a pool cannot reach Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runtime import metrics
from runtime.liveness import Board

logger = logging.getLogger(__name__)


class RedisLink:
    def __init__(self, who: str, board: Board | None, *, on_back: Callable[[], None] | None = None) -> None:
        self.who = who
        self.board = board
        self.on_back = on_back  # told when an outage ends (the server may be another one now: a failover)
        self.down_since: float | None = None
        metrics.REDIS_UP.labels("pool").set(1)

    def failed(self, operation: str, err: BaseException) -> None:
        """A call for `operation` failed for want of a connection or a reply."""
        metrics.REDIS_CALL_FAILURES.labels(operation).inc()
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        logger.warning("%s cannot reach Redis (%s: %s); jobs wait, running ones keep their results "
                       "until it answers", self.who, operation, err)
        metrics.REDIS_UP.labels("pool").set(0)
        if self.board is not None:
            self.board.redis_unreachable(self.down_since)

    def answered(self) -> None:
        """A call got its reply: the link works (costs one comparison while it does)."""
        if self.down_since is None:
            return
        logger.info("%s reaches Redis again after %.1fs", self.who, time.monotonic() - self.down_since)
        self.down_since = None
        metrics.REDIS_UP.labels("pool").set(1)
        if self.board is not None:
            self.board.redis_unreachable(None)
        if self.on_back is not None:
            self.on_back()
