"""cancel.lua through Broker.cancel: every non-terminal state cancels, terminal states conflict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from runtime.broker.core import Broker
from runtime.broker.keys import Keys
from runtime.errors import Conflict, NotFound
from runtime.ids import uuid7
from tests.broker.conftest import Run, read_job

JobInState = Callable[[str], str]


@pytest.mark.parametrize("state", ["scheduled", "available", "pending", "active", "retryable"])
def test_cancel_non_terminal_job(
    job_in_state: JobInState, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    state: str,
) -> None:
    # Given
    job_id = job_in_state(state)
    before = read_job(redis_client, keys, job_id)
    # When
    previous = run(broker.cancel(job_id))
    # Then: cancelled, never completed, out of every lifecycle index (and of expiring)
    job = read_job(redis_client, keys, job_id)
    assert previous == state
    assert (job["state"], job["previous_state"]) == ("cancelled", state)
    assert "cancelled_at" in job and "completed_at" not in job
    assert job["attempt"] == before["attempt"]
    assert job.get("started_at") == before.get("started_at")
    for index in (keys.available("states"), keys.delayed, keys.active, keys.expiring):
        assert redis_client.zscore(index, job_id) is None
    assert redis_client.hget(keys.counts("states"), "cancelled") == b"1"
    assert int(redis_client.hget(keys.counts("states"), state) or 0) == 0
    assert redis_client.xrange(keys.events)[-1][1][b"type"] == b"job.cancelled"


def test_cancel_active_job_refuses_late_ack_and_tells_heartbeat(
    job_in_state: JobInState, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys
) -> None:
    # Given: a job cancelled while its worker runs it
    job_id = job_in_state("active")
    run(broker.cancel(job_id))
    # When / Then: the worker's next heartbeat names it, and its ack is a conflict
    beat = run(broker.heartbeat("w1", [job_id]))
    assert (beat.extended, beat.cancelled) == ([], [job_id])
    with pytest.raises(Conflict):
        run(broker.ack(job_id, worker_id="w1"))
    assert not redis_client.exists(keys.worker_jobs("w1"))


@pytest.mark.parametrize("state", ["completed", "cancelled", "discarded"])
def test_cancel_terminal_job_is_conflict(
    job_in_state: JobInState, broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    state: str,
) -> None:
    job_id = job_in_state(state)
    before = read_job(redis_client, keys, job_id)
    with pytest.raises(Conflict) as err:
        run(broker.cancel(job_id))
    assert err.value.status == 409
    assert err.value.details == {"state": state}
    assert read_job(redis_client, keys, job_id) == before


def test_cancel_missing_job_is_not_found(broker: Broker, run: Run[Any]) -> None:
    with pytest.raises(NotFound):
        run(broker.cancel(uuid7()))
