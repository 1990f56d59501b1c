"""The parent <-> child "still alive" channel, and the exit codes both sides agree on.

One small record per child in an unlinked temp file: the supervisor creates it before forking and
the child inherits the open descriptor. The child overwrites the record (its phase and
``time.monotonic()``) about once a second from its event loop; the supervisor reads it on every
tick. There is no pipe to fill up and no protocol: a child whose event loop is blocked (a C
extension holding the GIL, say) stops renewing the time and is killed after a timeout; a child
that knows it is broken (a handler thread that will not stop) says so with :data:`STUCK` and is
replaced at once. gunicorn's ``WorkerTmp`` does the same with a file's mtime.

``CLOCK_MONOTONIC`` is system-wide on Linux, so both processes read the same clock.
"""

from __future__ import annotations

import enum
import os
import tempfile
import time

import msgspec

EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # the child cannot start (handlers module import failed): stop, never respawn

RECORD_BYTES = 32


class Phase(enum.StrEnum):
    BOOT = "boot"  # forked, importing the handlers module, connecting
    READY = "ready"  # fetching and running jobs
    DRAINING = "draining"  # stopping: no new jobs, finishing the running ones
    STUCK = "stuck"  # a handler ignored its timeout: kill and replace this process now


class Beat(msgspec.Struct, frozen=True):
    phase: Phase
    at_monotonic: float


class Liveness:
    """One child's liveness record. Written by the child, read by the supervisor."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="ojs-liveness-")
        os.unlink(path)  # nothing to clean up, whatever way the processes end
        self._fd = fd
        self.notify(Phase.BOOT)

    def notify(self, phase: Phase) -> None:
        record = f"{phase.value:<9}{time.monotonic():>18.3f}".encode().ljust(RECORD_BYTES)
        try:
            os.pwrite(self._fd, record, 0)
        except OSError:
            pass  # the supervisor will see the record go stale, which is the right signal

    def read(self) -> Beat | None:
        """The last record, or None if it cannot be read (a torn write: try again next tick)."""
        try:
            raw = os.pread(self._fd, RECORD_BYTES, 0).decode()
            phase, at = raw.split()
            return Beat(Phase(phase), float(at))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
