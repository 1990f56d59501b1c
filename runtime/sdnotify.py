"""systemd's notify protocol without libsystemd: one datagram per state change to $NOTIFY_SOCKET.

Under ``Type=notify`` systemd waits for ``READY=1`` before it considers the unit started; with
``WatchdogSec=`` it expects ``WATCHDOG=1`` more often than that, and restarts the service when
the pings stop; ``STOPPING=1`` tells it a stop has begun. The socket path may start with ``@``
for the Linux abstract namespace. Without ``NOTIFY_SOCKET`` (not under systemd) every call is a
no-op. Each send opens and closes its own socket, so nothing is held across a fork.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines (e.g. ``"READY=1"``); True when a datagram was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), target)
    except OSError as err:
        logger.warning("sd_notify to %s failed: %s", address, err)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to ping: half of ``WATCHDOG_USEC``, if the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    owner = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner.isdigit() and int(owner) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Notifier:
    """The service manager's view of one process: ready once, watchdog pings at most every
    ``interval_s``, stopping once."""

    def __init__(self) -> None:
        self.interval_s = watchdog_interval_s()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.ready_sent = self._stopping = False
        self._last_ping = -float("inf")

    def ready(self, status: str = "") -> None:
        if not self.ready_sent:
            self.ready_sent = True
            notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> None:
        if not self._stopping:
            self._stopping = True
            notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        now = time.monotonic()
        if self.interval_s is not None and now - self._last_ping >= self.interval_s:
            self._last_ping = now
            notify("WATCHDOG=1")
