"""Which queues a pool's next fetch takes from: pure functions, no I/O, no state of their own.

A pool listens on weighted queues (``--queues default:1,email:3``). For every fetch it has some
free slots; :func:`quotas` decides how many of them each queue may fill, and the fetch script
takes at most that many from each queue in a first pass. A second pass in the script fills what
is left in queue order, so an empty queue gives its share to the others and no slot idles while
any queue has work.

``weighted`` uses smooth weighted round robin (the nginx upstream algorithm): every pick adds
each queue's weight to its running score, takes the queue with the highest score, and subtracts
the total weight from it. Over any ``sum(weights)`` consecutive picks each queue is picked exactly
``weight`` times, and the picks are interleaved (3:1 gives ``a a b a``), not bursts. The scores
are the only state; the caller keeps them between fetches.

``strict`` has no quotas: queues are tried in the order given, so a later queue gets work only
when the earlier ones are empty (the OJS ``strict`` strategy).
"""

from __future__ import annotations

from collections.abc import Sequence

WEIGHTED = "weighted"
STRICT = "strict"
STRATEGIES = (WEIGHTED, STRICT)
MAX_WEIGHT = 1_000


def parse_queues(text: str) -> tuple[tuple[str, int], ...]:
    """``"default:1,email:3"`` into ``(("default", 1), ("email", 3))``; a missing weight is 1."""
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, weight_text = item.partition(":")
        name = name.strip()
        try:
            weight = int(weight_text) if sep else 1
        except ValueError:
            raise ValueError(f"queue {name!r}: weight {weight_text!r} is not an integer") from None
        if not name:
            raise ValueError(f"queue entry {item!r} has no name")
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"queue {name!r}: weight must be between 1 and {MAX_WEIGHT}")
        if any(name == seen for seen, _ in out):
            raise ValueError(f"queue {name!r} is listed twice")
        out.append((name, weight))
    if not out:
        raise ValueError("no queues given")
    return tuple(out)


def initial_scores(count: int) -> tuple[int, ...]:
    return (0,) * count


def pick(weights: Sequence[int], scores: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """One smooth-weighted-round-robin pick: the chosen index and the scores after it."""
    raised = [score + weight for score, weight in zip(scores, weights, strict=True)]
    chosen = max(range(len(raised)), key=raised.__getitem__)  # first of equals: stable order
    raised[chosen] -= sum(weights)
    return chosen, tuple(raised)


def quotas(
    weights: Sequence[int], scores: Sequence[int], slots: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """How many of `slots` free slots each queue may fill, and the scores after those picks."""
    counts = [0] * len(weights)
    for _ in range(slots):
        chosen, scores = pick(weights, scores)
        counts[chosen] += 1
    return tuple(counts), tuple(scores)
