"""UUIDv7 identifiers: time-ordered, so ids sort by creation and index well."""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Random bits from a generator seeded by the OS, not one getrandom() call per id (two system
# calls cost more than the rest of an enqueue's Python work). The ids must be unique, not secret;
# a forked child seeds its own generator, so two processes never share a sequence.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def uuid7() -> str:
    """A lowercase, hyphenated UUIDv7 (RFC 9562): 48-bit ms time, 12-bit counter, 62 random bits.

    The counter (method 1 of RFC 9562 §6.2) keeps ids made in the same millisecond in creation
    order, so jobs of one batch keep their order wherever they are sorted by id.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, _random.getrandbits(9)
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms, _counter = _last_ms + 1, 0
            ms = _last_ms
        counter = _counter
    rand = _random.getrandbits(62)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
