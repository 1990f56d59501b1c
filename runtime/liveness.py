"""The parent <-> child "still alive" channel, and the exit codes both sides agree on.

One small record per child in an unlinked temp file: the supervisor creates it before forking and
the child inherits the open descriptor. The child overwrites the record (its phase and
``time.monotonic()``) about once a second from its event loop; the supervisor reads it on every
tick. There is no pipe to fill up and no protocol: a child whose event loop is blocked (a C
extension holding the GIL, say) stops renewing the time and is killed after a timeout; a child
that knows it is broken (a handler thread that will not stop) says so with :data:`STUCK` and is
replaced at once. gunicorn's ``WorkerTmp`` does the same with a file's mtime. The same file
carries the :class:`~runtime.run_record.RunRecord` (which jobs the child is running), which the
supervisor reads when the child has died.

:class:`Board` is the other direction, for readiness: one small shared memory page the supervisor
maps before its first fork, so every child (the HTTP process and pools forked later alike) sees
the same page. The supervisor writes whether the runtime is quiet or draining; each pool writes
the time of its last successful fetch, and since when it cannot reach Redis; the HTTP process
reads them to answer ``/ready``.

``CLOCK_MONOTONIC`` is system-wide on Linux, so both processes read the same clock.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import tempfile
import time

import msgspec

from runtime.run_record import RunRecord

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
        self.jobs = RunRecord(fd)
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
        self.jobs.close()
        try:
            os.close(self._fd)
        except OSError:
            pass


class Board:
    """Runtime state the HTTP process reports on ``/ready``. Written by the supervisor (quiet,
    draining) and the pools (last successful fetch); an 8-byte aligned store, so a reader sees
    one value or the other, and at worst one probe answers from a stale value."""

    # flags, last successful fetch (time.monotonic(); 0: never), Redis unreachable by a pool
    # since (time.monotonic(); 0: reachable). The last pool to report sets the latter: pools
    # share one Redis, so they see an outage begin and end alike.
    _LAYOUT = struct.Struct("<I4xdd")
    QUIET, DRAINING = 1, 2

    def __init__(self, *, stall_s: float) -> None:
        self.stall_s = stall_s
        self._page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED)

    def fetched(self) -> None:
        """A pool fetched (or had every slot busy, so had no reason to)."""
        struct.pack_into("<d", self._page, 8, time.monotonic())

    def redis_unreachable(self, since: float | None) -> None:
        """A pool cannot reach Redis since `since` (time.monotonic()); None: it can again."""
        struct.pack_into("<d", self._page, 16, since or 0.0)

    def set_flag(self, flag: int, on: bool) -> None:
        flags = self._LAYOUT.unpack_from(self._page, 0)[0]
        struct.pack_into("<I", self._page, 0, flags | flag if on else flags & ~flag)

    def not_ready(self) -> str | None:
        """Why the runtime is not ready, or None."""
        flags, last, unreachable_since = self._LAYOUT.unpack_from(self._page, 0)
        if flags & self.DRAINING:
            return "draining"
        if flags & self.QUIET:
            return "quiet"
        if unreachable_since:
            return f"redis unreachable from a pool for {time.monotonic() - unreachable_since:.0f}s"
        if last == 0:
            return "starting: no pool has fetched yet"
        idle_s = time.monotonic() - last
        if idle_s > self.stall_s:
            return f"stalled: no pool has fetched for {idle_s:.0f}s"
        return None
