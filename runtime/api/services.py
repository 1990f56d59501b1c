"""What the HTTP handlers share: the broker facades, the settings and process state."""

from __future__ import annotations

import time

from runtime.api.probe import BackendProbe
from runtime.broker.admin import Admin
from runtime.broker.core import Broker
from runtime.broker.crons import Crons
from runtime.broker.dead_workers import SilentWorkers
from runtime.broker.job_admin import JobAdmin
from runtime.broker.queue_config import QueueConfig
from runtime.broker.rate_limits import RateLimits
from runtime.broker.stats_history import StatsHistory
from runtime.broker.webhooks import Webhooks
from runtime.broker.workflows import Workflows
from runtime.config import Settings
from runtime.liveness import Board


class Services:
    def __init__(self, broker: Broker, settings: Settings, *, board: Board | None = None) -> None:
        self.broker = broker
        self.admin = Admin(broker)
        self.crons = Crons(broker)
        self.workflows = Workflows(broker)
        self.job_admin = JobAdmin(broker)
        self.queue_config = QueueConfig(broker.redis, broker.keys)
        self.rate_limits = RateLimits(broker.redis, broker.keys.prefix)
        self.history = StatsHistory(
            broker.redis, broker.keys, broker.scripts, minute_retention_ms=settings.stats_minute_retention_ms,
            hour_retention_ms=settings.stats_hour_retention_ms,
        )
        self.silent_workers = SilentWorkers(broker)
        self.webhooks = Webhooks(broker)
        self.settings = settings
        self.started_monotonic = time.monotonic()
        self.draining = False
        self.board = board  # under ojs-run: the pools' fetch progress, quiet and draining
        self.probe = BackendProbe.beside(broker.redis)  # what /health and /ready read; started by the app

    @property
    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started_monotonic)
