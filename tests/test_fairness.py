"""Weighted queue selection (runtime.fairness): pure functions, no Redis."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime import fairness


def picks(weights: list[int], n: int) -> list[int]:
    scores = fairness.initial_scores(len(weights))
    out = []
    for _ in range(n):
        chosen, scores = fairness.pick(weights, scores)
        out.append(chosen)
    return out


def test_pick_smooth_weighted_round_robin_interleaves_3_to_1() -> None:
    assert picks([3, 1], 8) == [0, 0, 1, 0, 0, 0, 1, 0]


def test_pick_gives_each_queue_exactly_its_weight_per_cycle() -> None:
    weights = [5, 2, 1]
    sequence = picks(weights, 8 * 10)
    for cycle in range(10):
        counts = Counter(sequence[cycle * 8:(cycle + 1) * 8])
        assert [counts[i] for i in range(3)] == weights


def test_pick_equal_weights_is_round_robin() -> None:
    assert picks([1, 1, 1], 6) == [0, 1, 2, 0, 1, 2]


def test_pick_never_starves_a_light_queue() -> None:
    sequence = picks([100, 1], 101)
    assert sequence.count(1) == 1


def test_quotas_split_free_slots_by_weight_and_carry_state() -> None:
    weights = [3, 1]
    scores = fairness.initial_scores(2)
    total = [0, 0]
    for slots in (1, 3, 2, 2, 4, 4):  # fetches of varying size keep the 3:1 ratio overall
        quota, scores = fairness.quotas(weights, scores, slots)
        assert sum(quota) == slots
        total = [a + b for a, b in zip(total, quota, strict=True)]
    assert total == [12, 4]


def test_quotas_zero_slots_change_nothing() -> None:
    scores = (2, -2)
    assert fairness.quotas([3, 1], scores, 0) == ((0, 0), scores)


def test_parse_queues_reads_names_and_weights() -> None:
    assert fairness.parse_queues("default:1, email:3,reports") == (("default", 1), ("email", 3), ("reports", 1))


@pytest.mark.parametrize("text", ["", "a:0", "a:x", "a:1,a:2", ":3", "a:1001"])
def test_parse_queues_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        fairness.parse_queues(text)
