"""Which of its jobs a pool process is running, for the supervisor to read once it has died.

A pool holds a job in one of three ways: running (its handler executes), settling (the handler
returned; the ack or nack is on its way) or buffered (prefetched, or claimed by a fetch whose reply
never arrived). When the process dies, only a running job can have killed it. Redis knows which
jobs a worker holds (``worker-jobs:<id>``), not which of them ran: this record says.

It lives in the child's liveness file, past the liveness record, so the supervisor already holds
it. The pool rewrites it with one ``pwrite`` (no Redis round trip, a few microseconds), at most
once per event-loop iteration (a handler that returns and the next one that starts share it): a
handler that starts is in the record before its first line runs, since the write is
scheduled ahead of the handler's task. The supervisor reads it after the process has ended. A
record it cannot read (a write torn by the death) reads as None, and the caller must then suspect
every job the process held.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib

import msgspec

OFFSET = 4096  # past the liveness record
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_MAX_BYTES = 16 << 20


class RunSnapshot(msgspec.Struct, frozen=True):
    running: frozenset[str] = frozenset()  # job ids whose handler was executing
    settling: frozenset[str] = frozenset()  # job ids whose handler had returned, not yet settled


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RunSnapshot)


class RunRecord:
    """Written by the pool (the ``started`` / ``returned`` / ``settled`` calls, keyed by the
    claim's fencing token, so two claims of one job are told apart); read by the supervisor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._running: dict[str, str] = {}  # claim token -> job id
        self._settling: dict[str, str] = {}
        self._flush_scheduled = False
        self._flush()  # an empty record: a record that is missing reads as unreadable

    def started(self, job_id: str, claim: str) -> None:
        self._running[claim] = job_id
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

    def _flush(self) -> None:
        self._flush_scheduled = False
        payload = _encoder.encode(RunSnapshot(frozenset(self._running.values()), frozenset(self._settling.values())))
        try:
            os.pwrite(self._fd, _HEADER.pack(len(payload), zlib.crc32(payload)) + payload, OFFSET)
        except OSError:  # an older record would wrongly clear a job that runs now: drop it instead
            try:
                os.ftruncate(self._fd, OFFSET)
            except OSError:
                pass

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
            return _decoder.decode(payload)
        except (OSError, struct.error, msgspec.DecodeError):
            return None
