"""The workflow listing (GET /ojs/v1/workflows): newest first, a page at a time by cursor, every
workflow exactly once, however many were created in the same millisecond."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.broker.workflows import Workflows
from tests.broker.conftest import Run
from tests.broker.test_nested_workflows import chain, msgspec_request, step


def _create(flows: Workflows, run: Run[Any], n: int) -> list[str]:
    return [run(flows.create(msgspec_request(chain(step("a")))))["id"] for _ in range(n)]


def _walk(flows: Workflows, run: Run[Any], *, limit: int, state: str | None = None) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(1_000):  # a bound on the walk: each page moves the cursor forward
        items, after = run(flows.list(state=state, limit=limit, after=after))
        seen += [item["id"] for item in items]
        if after is None:
            return seen
    raise AssertionError("the listing never ended")


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_every_workflow_of_one_millisecond_is_listed_once_page_by_page(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch,
    limit: int,
) -> None:
    # Given 150 workflows created in one millisecond, between two created in others
    flows = Workflows(broker)
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_000)
    older = _create(flows, run, 1)
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_001)
    burst = _create(flows, run, 150)
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_002)
    newer = _create(flows, run, 1)
    # When the listing is walked a page at a time
    seen = _walk(flows, run, limit=limit)
    # Then each one is listed once, newest first (within the millisecond, by id, as the index
    # orders them)
    assert seen == newer + sorted(burst, reverse=True) + older


def test_a_filtered_walk_past_a_crowded_millisecond_finds_the_older_matches(
    broker: Broker, run: Run[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a workflow that was cancelled, then 120 running ones created in one millisecond
    flows = Workflows(broker)
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_000)
    (cancelled,) = _create(flows, run, 1)
    run(flows.cancel(cancelled))
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_001)
    _create(flows, run, 120)
    # When only cancelled workflows are listed, a few index entries read per call
    state = run(flows.get(cancelled))["state"]
    seen: list[str] = []
    after = None
    for _ in range(1_000):
        items, after = run(flows.list(state=state, limit=5, after=after, scan=10))
        seen += [item["id"] for item in items]
        if after is None:
            break
    # Then the walk gets past the crowded millisecond to it
    assert seen == [cancelled]


def test_a_walk_goes_on_when_the_workflow_its_cursor_names_is_gone(
    broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 100 workflows of one millisecond, and a first page of 10 of them
    flows = Workflows(broker)
    monkeypatch.setattr(timefmt, "now_ms", lambda: 1_700_000_000_001)
    burst = sorted(_create(flows, run, 100), reverse=True)
    items, after = run(flows.list(state=None, limit=10, after=None))
    assert after is not None and after[1] == burst[9]
    # When the workflow the cursor names leaves the index (deleted) before the next page
    redis_client.zrem(keys.workflows, after[1])
    seen = [item["id"] for item in items]
    while after is not None:
        items, after = run(flows.list(state=None, limit=10, after=after))
        seen += [item["id"] for item in items]
    # Then the walk still lists the rest, once each
    assert seen == burst
