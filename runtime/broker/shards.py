"""Shards: one namespace split over N key prefixes, each a full copy of the key schema in its own
Redis Cluster slot (``OJS_SHARDS``). With one shard nothing here applies: the prefix is the
configured one and every id and job goes where it always went.

A shard's prefix carries a hash tag made from the namespace's own (``{ojs}:`` gives
``{ojs-0.<n>}:`` ... ``{ojs-<N-1>.<n>}:``), with the number ``n`` chosen so that shard ``i``'s slot
falls in the middle of the ``i``-th of N equal slices of the 16384 slots: a cluster split evenly
over N primaries (or over a number that divides N) then holds the same number of shards on each.

A job lives in exactly one shard, chosen from one placement key (see :func:`placement_key`), and
``crc16(key) mod N`` names the shard. The runtime draws the ids it makes so that an id hashes to
its job's shard (:func:`id_in`); a client-chosen id need not, and is looked up in every shard.
"""

from __future__ import annotations

import binascii
import functools
from typing import TYPE_CHECKING

import msgspec

from runtime.broker.keys import hash_tag
from runtime.ids import uuid7

if TYPE_CHECKING:
    from runtime.config import Settings

SLOTS = 16384
MAX_SHARDS = 64


def crc16(text: str) -> int:
    """Redis Cluster's key hash (CRC-16/XMODEM)."""
    return binascii.crc_hqx(text.encode(), 0)


def shard_of(key: str, count: int) -> int:
    return crc16(key) % count if count > 1 else 0


def _slot_window(index: int, count: int) -> tuple[int, int]:
    """The middle half of shard `index`'s slice of the slots."""
    width = SLOTS / count
    return int(index * width + width / 4), int(index * width + 3 * width / 4)


@functools.lru_cache(maxsize=32)
def shard_prefixes(prefix: str, count: int) -> tuple[str, ...]:
    """The N prefixes of a namespace: `prefix` itself for one shard."""
    if count == 1:
        return (prefix,)
    tag = hash_tag(prefix)
    if tag is None:  # no tag: the whole prefix (without its last colon) names the shards
        head, body, tail = "", prefix.rstrip(":"), ":"
    else:
        start = prefix.index("{" + tag + "}")
        head, body, tail = prefix[:start], tag, prefix[start + len(tag) + 2:]
    out = []
    for index in range(count):
        low, high = _slot_window(index, count)
        n = 0
        while not low <= crc16(f"{body}-{index}.{n}") % SLOTS < high:
            n += 1
        out.append(f"{head}{{{body}-{index}.{n}}}{tail}")
    return tuple(out)


def id_in(shard: int, count: int) -> str:
    """A new job id that hashes to `shard` (N tries on average)."""
    while True:
        job_id = uuid7()
        if shard_of(job_id, count) == shard:
            return job_id


def placement_key(*, queue: str, workflow_id: str | None = None, cron_name: str | None = None,
                  unique_fingerprint: str | None = None, rate_limit_key: str | None = None) -> str:
    """The key that decides a job's shard, the first that applies: the workflow's id (the whole
    graph in one shard, so advancing it stays one script), the cron's name (the tick's claim and
    its job in one script), a unique job's fingerprint (its lock beside the job), the rate-limit
    key (its counters beside the jobs they count), else the queue (its FIFO and priority order
    stay exact). A workflow's or a cron's unique job is therefore unique within that shard."""
    if workflow_id:
        return workflow_id  # the workflow id's own shard: its id names it
    if cron_name:
        return "c:" + cron_name
    if unique_fingerprint:
        return "u:" + unique_fingerprint
    if rate_limit_key:
        return "r:" + rate_limit_key
    return "q:" + queue


def shard_settings(settings: Settings) -> list[Settings]:
    """The settings of each shard: its own prefix, as a namespace of one shard."""
    if settings.shards == 1:
        return [settings]
    return [msgspec.structs.replace(settings, key_prefix=prefix, shards=1)
            for prefix in shard_prefixes(settings.key_prefix, settings.shards)]
