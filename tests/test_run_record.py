"""The run record a pool keeps in its liveness file: what the supervisor reads after a death."""

from __future__ import annotations

import asyncio
import os

from runtime.liveness import Liveness
from runtime.run_record import OFFSET, RunSnapshot


def test_the_record_tells_running_from_settling_and_forgets_settled_claims() -> None:
    liveness = Liveness()
    try:
        record = liveness.jobs
        assert record.read() == RunSnapshot()

        async def pool() -> None:
            record.started("a", "1")
            record.started("b", "2")
            record.started("a", "3")  # the same job claimed again while its old run goes on
            await asyncio.sleep(0)  # written once, before any handler's first step
            assert record.read() == RunSnapshot(frozenset({"a", "b"}))
            record.returned("1")
            record.returned("2")
            await asyncio.sleep(0)
            assert record.read() == RunSnapshot(frozenset({"a"}), frozenset({"a", "b"}))
            record.settled("1")
            record.settled("2")
            record.started("c", "4")
            await asyncio.sleep(0)  # settled jobs are gone from the next record written
            assert record.read() == RunSnapshot(frozenset({"a", "c"}))
            record.settled("3")  # one that never returned (cancelled): written at once
            await asyncio.sleep(0)
            assert record.read() == RunSnapshot(frozenset({"c"}))

        asyncio.run(pool())
    finally:
        liveness.close()


def test_a_torn_or_missing_record_reads_as_unknown() -> None:
    liveness = Liveness()
    try:
        record = liveness.jobs

        async def pool() -> None:
            record.started("a", "1")
            await asyncio.sleep(0)

        asyncio.run(pool())
        fd = record._fd
        os.pwrite(fd, b"\xff", OFFSET + 9)  # one payload byte overwritten: the checksum fails
        assert record.read() is None
        os.ftruncate(fd, OFFSET)
        assert record.read() is None
    finally:
        liveness.close()
