"""Worker ids of ``ojs-run`` pools that say where they ran: host, supervisor, pool process.

``worker_<supervisor pid>-<supervisor start>-<n>-<pool pid>@<host>``: ``n`` counts the pools of
one supervisor (a pid can come back within one run), and the supervisor's start time (in
hundredths of a second, from the kernel) tells it apart from a later process with the same pid.
A starting supervisor reads these in the worker registry to recognise the pools of a runtime on
its own host that is no longer running (:mod:`runtime.recovery`), without waiting for their
heartbeats to lapse.
"""

from __future__ import annotations

import os
import re
import socket

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

_PATTERN = re.compile(r"^worker_(\d+)-(\d+)-(\d+)-(\d+)@(.+)$")


class PoolId(msgspec.Struct, frozen=True):
    supervisor_pid: int
    supervisor_start: int
    seq: int
    pid: int
    host: str

    def __str__(self) -> str:
        return f"worker_{self.supervisor_pid}-{self.supervisor_start}-{self.seq}-{self.pid}@{self.host}"


def parse(worker_id: str) -> PoolId | None:
    match = _PATTERN.match(worker_id)
    if match is None:
        return None
    sup, start, seq, pid, host = match.groups()
    return PoolId(int(sup), int(start), int(seq), int(pid), host)


def host_name() -> str:
    return socket.gethostname()


def start_token(pid: int) -> int | None:
    """When process `pid` started, in hundredths of a second (None: there is no such process)."""
    try:
        started: float = psutil.Process(pid).create_time()
        return round(started * 100)
    except psutil.Error:
        return None


def is_running(pid: int, start: int) -> bool:
    """Process `pid` exists and is the one that started at `start` (not a later reuse of the pid)."""
    token = start_token(pid)
    return token is not None and abs(token - start) <= 1


class PoolIds:
    """The ids one supervisor gives its pools."""

    def __init__(self) -> None:
        self.host = host_name()
        self.pid = os.getpid()
        self.start = start_token(self.pid) or 0
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def make(self, seq: int, pool_pid: int) -> str:
        return str(PoolId(self.pid, self.start, seq, pool_pid, self.host))
