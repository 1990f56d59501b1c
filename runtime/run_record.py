"""Which of its jobs a pool process is running, for the supervisor to read once it has died.

A pool holds a job in one of three ways: running (its handler executes), settling (the handler
returned; the ack or nack is on its way) or buffered (prefetched, or claimed by a fetch whose reply
never arrived). When the process dies, only a running job can have killed it. Redis knows which
jobs a worker holds (``worker-jobs:<id>``), not which of them ran: this record says.

It lives in the child's liveness file, past the liveness record, so the supervisor already holds
it. The pool rewrites it with one copy into a shared mapping (no Redis round trip, no system
call), at most once per event-loop iteration (a handler that returns and the next one that
starts share it): a handler that starts is in the record before its first line runs, since the
write is scheduled ahead of the handler's task. The supervisor reads it after the process has ended. A
record it cannot read (a write torn by the death) reads as None, and the caller must then suspect
every job the process held.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
import zlib

import msgspec

OFFSET = 4096  # past the liveness record (a page: the record's own mapping starts here)
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
REGION_BYTES = 1 << 20  # the record's room in the file (sparse: only what is written is stored)
_MAX_BYTES = REGION_BYTES - _HEADER.size
_SETS, _IDS = b"\x00", b"\n"  # running ids, then settling ids; job ids hold neither byte


def _note_pid() -> None:
    global _pid
    _pid = os.getpid()


# This process's id, kept at every fork (os.getpid() is a system call: once per write was a
# measurable share of the record's cost).
_pid = os.getpid()
os.register_at_fork(after_in_child=_note_pid)


class RunSnapshot(msgspec.Struct, frozen=True):
    running: frozenset[str] = frozenset()  # job ids whose handler was executing
    settling: frozenset[str] = frozenset()  # job ids whose handler had returned, not yet settled


class RunRecord:
    """Written by the pool (the ``started`` / ``returned`` / ``settled`` calls, keyed by the
    claim's fencing token, so two claims of one job are told apart); read by the supervisor.

    The pool writes through a shared mapping of the file (a memory copy, no system call: a few
    hundred nanoseconds where a ``pwrite`` cost microseconds on every job); the supervisor reads
    with ``pread``, which sees the same pages, also after the writer died."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._running: dict[str, bytes] = {}  # claim token -> job id (encoded once, at the start)
        self._settling: dict[str, bytes] = {}
        self._flush_scheduled = False
        self._map: mmap.mmap | None = None
        self._map_pid = 0
        try:
            os.ftruncate(fd, OFFSET + REGION_BYTES)
        except OSError:
            pass
        os.pwrite(fd, _HEADER.pack(0, zlib.crc32(b"")), OFFSET)  # an empty record: a missing one reads as unreadable

    def started(self, job_id: str, claim: str) -> None:
        self._running[claim] = job_id.encode()
        self._changed()

    def returned(self, claim: str) -> None:
        job_id = self._running.pop(claim, None)
        if job_id is not None:
            self._settling[claim] = job_id
            self._changed()

    def settled(self, claim: str) -> None:
        # A settled job is no longer held (worker-jobs:<id>), so the supervisor ignores it in the
        # record: forgetting it waits for the next write, which saves one per job.
        self._settling.pop(claim, None)
        if self._running.pop(claim, None) is not None:
            self._changed()

    def _changed(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _mapping(self) -> mmap.mmap | None:
        if self._map is None or self._map_pid != _pid:  # mapped in the process that writes
            try:
                self._map = mmap.mmap(self._fd, REGION_BYTES, flags=mmap.MAP_SHARED, offset=OFFSET)
                self._map_pid = _pid
            except (OSError, ValueError):
                self._map = None
        return self._map

    def _flush(self) -> None:
        self._flush_scheduled = False
        payload = _IDS.join(self._running.values()) + _SETS + _IDS.join(self._settling.values())
        page = self._mapping()
        if page is None or len(payload) > _MAX_BYTES:
            # An older record would wrongly clear a job that runs now: make it unreadable instead
            # (the supervisor then suspects every job the process held).
            try:
                os.pwrite(self._fd, _HEADER.pack(0, 1), OFFSET)
            except OSError:
                pass
            return
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        page[:len(record)] = record  # one copy; one torn by the death fails its CRC

    def read(self) -> RunSnapshot | None:
        """The last record written, or None if it cannot be read."""
        try:
            length, crc = _HEADER.unpack(os.pread(self._fd, _HEADER.size, OFFSET))
            if length > _MAX_BYTES:
                return None
            payload = os.pread(self._fd, length, OFFSET + _HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                return None
            if not payload:
                return RunSnapshot()
            running, _, settling = payload.partition(_SETS)
            return RunSnapshot(frozenset(x.decode() for x in running.split(_IDS) if x),
                               frozenset(x.decode() for x in settling.split(_IDS) if x))
        except (OSError, struct.error, UnicodeDecodeError):
            return None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
