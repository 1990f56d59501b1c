"""Model-based test of a queue's order: random interleavings of enqueues at a few priorities,
fetches by busy and idle workers, acks, and every way a job goes back to `available` (nack.lua's
release, lease_expired, worker_lost, worker_lost_shared, outcome_lost, requeue; several jobs in
one call), against a reference model of the order the queue must keep. After every step the
queue's available set, read in score order, is exactly the model's order.

The order the model keeps: bands by priority, highest first; within a band, enqueues and
requeues join the end; a job handed back through no doing of its own goes to the head, and jobs
handed back in one call keep the order they were given in; a worker_lost joins the end (it alone
can have killed its process). A suspect (lost with its process) waits in its place, a busy
worker's fetch passes over it, and an idle worker gets the first one, alone. Losses past the caps
dead-letter the job (nack.lua).

The namespace starts with a long history (its sequence counter well above 0), as any store in use
has: the head of a band is then never near 0, where equal scores would fall back to id order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runtime import timefmt
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.integrity import check_integrity
from tests.broker.conftest import Run, body, new_job

QUEUE = "order"
PRIORITIES = (0, 0, 5, -5)  # the default band most often
LEASE_MS = 60_000
HISTORY_SEQ = 10_000_000  # the sequence counter of a store with a history
FRONT = frozenset({"release", "lease_expired", "worker_lost_shared", "outcome_lost"})
VERDICTS = ("release", "lease_expired", "worker_lost", "worker_lost_shared", "outcome_lost", "requeue")
ORDER_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None, derandomize=True, database=None,
                          report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Held:
    job_id: str
    claim: str
    worker: str


@dataclass
class Model:
    bands: dict[int, list[str]] = field(default_factory=dict)  # priority -> ids in order
    priority: dict[str, int] = field(default_factory=dict)
    # Suspects: lost with their process. The mark stays on the job (claimed, handed back) until
    # it ends; one that waits is in the queue's suspects index.
    suspects: set[str] = field(default_factory=set)
    lost: dict[str, int] = field(default_factory=dict)  # worker_lost: the job's own losses
    shared_lost: dict[str, int] = field(default_factory=dict)  # worker_lost_shared and outcome_lost

    def order(self) -> list[str]:
        return [i for p in sorted(self.bands, reverse=True) for i in self.bands[p]]

    def take(self, job_id: str) -> None:
        self.bands[self.priority[job_id]].remove(job_id)

    def waiting_suspects(self) -> set[str]:
        return self.suspects & set(self.order())


class QueueOrder(RuleBasedStateMachine):
    broker: ClassVar[Broker]
    run: ClassVar[Run[Any]]

    def __init__(self) -> None:
        super().__init__()
        self.run(self.broker.redis.flushdb())
        self.run(self.broker.redis.set(self.broker.keys.seq, HISTORY_SEQ))
        self.now = timefmt.now_ms()
        self.model = Model()
        self.held: list[Held] = []
        self.cap = self.broker.settings.worker_lost_cap

    @rule(priority=st.sampled_from(PRIORITIES), count=st.integers(1, 3))
    def enqueue(self, priority: int, count: int) -> None:
        jobs = [new_job(body(queue=QUEUE, priority=priority, retry={"max_attempts": 100}), now_ms=self.now)
                for _ in range(count)]
        for done in self.run(self.broker.enqueue(jobs, now_ms=self.now)):
            self.model.bands.setdefault(priority, []).append(done.job_id)
            self.model.priority[done.job_id] = priority

    @rule(count=st.integers(1, 4), worker=st.sampled_from(["busy-1", "busy-2"]))
    def busy_fetch(self, count: int, worker: str) -> None:
        """A worker that runs something: it never gets a suspect, and passes over them."""
        got = self.run(self.broker.fetch([QUEUE], count=count, worker_id=worker, idle=False,
                                         visibility_ms=LEASE_MS, now_ms=self.now))
        expected = [i for i in self.model.order() if i not in self.model.suspects][:count]
        assert [h[b"id"].decode() for h in got] == expected
        self._hold(got, worker)

    @rule()
    def idle_fetch(self) -> None:
        """A worker that runs nothing: the first suspect, alone, if one waits; else the head."""
        got = self.run(self.broker.fetch([QUEUE], count=3, worker_id="idle", idle=True,
                                         visibility_ms=LEASE_MS, now_ms=self.now))
        order = self.model.order()
        suspects = [i for i in order if i in self.model.suspects]
        expected = suspects[:1] if suspects else order[:3]
        assert [h[b"id"].decode() for h in got] == expected
        self._hold(got, "idle")

    def _hold(self, got: list[dict[bytes, bytes]], worker: str) -> None:
        for h in got:
            job_id = h[b"id"].decode()
            self.model.take(job_id)
            self.held.append(Held(job_id, h[b"claim"].decode(), worker))

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 100))
    def ack(self, pick: int) -> None:
        held = self.held.pop(pick % len(self.held))
        self.model.suspects.discard(held.job_id)
        (done,) = self.run(self.broker.ack_many([Completion(job_id=held.job_id, worker_id=held.worker,
                                                            claim=held.claim)]))
        assert not isinstance(done, Exception), done

    @precondition(lambda self: self.held)
    @rule(verdict=st.sampled_from(VERDICTS), picks=st.lists(st.integers(0, 100), min_size=1, max_size=4))
    def hand_back(self, verdict: str, picks: list[int]) -> None:
        """Some held jobs back in one call (one worker's), in the order picked."""
        worker = self.held[picks[0] % len(self.held)].worker
        mine = [h for h in self.held if h.worker == worker]
        chosen: list[Held] = []
        for p in picks:
            h = mine[p % len(mine)]
            if h not in chosen:
                chosen.append(h)
        for h in chosen:
            self.held.remove(h)
        now = self.now + LEASE_MS + 1 if verdict == "lease_expired" else self.now
        failures = [Failure(job_id=h.job_id, verdict=verdict, error=b'{"message":"model"}', worker_id=h.worker,
                            claim=h.claim) for h in chosen]
        results = self.run(self.broker.fail_many(failures, now_ms=now))
        back = []
        for h, result in zip(chosen, results, strict=True):
            assert not isinstance(result, Exception), result
            if self._ends(h.job_id, verdict):
                assert result.state == "discarded", (verdict, result)
                self.model.suspects.discard(h.job_id)
                continue
            assert result.state == "available", (verdict, result)
            back.append(h.job_id)
            if verdict in ("worker_lost", "worker_lost_shared"):
                self.model.suspects.add(h.job_id)
        for job_id in back:
            if verdict not in FRONT:
                self.model.bands[self.model.priority[job_id]].append(job_id)
        for priority in {self.model.priority[i] for i in back if verdict in FRONT}:
            band = [i for i in back if self.model.priority[i] == priority]
            self.model.bands[priority][:0] = band

    def _ends(self, job_id: str, verdict: str) -> bool:
        """Whether this loss is the one past its cap (the job is dead-lettered)."""
        if verdict == "worker_lost":
            self.model.lost[job_id] = self.model.lost.get(job_id, 0) + 1
            return self.model.lost[job_id] >= self.cap
        if verdict in ("worker_lost_shared", "outcome_lost"):
            self.model.shared_lost[job_id] = self.model.shared_lost.get(job_id, 0) + 1
            return self.model.shared_lost[job_id] >= 2 * self.cap
        return False

    @invariant()
    def the_queue_keeps_the_models_order(self) -> None:
        stored = [m.decode() for m in self.run(self.broker.redis.zrange(self.broker.keys.available(QUEUE), 0, -1))]
        assert stored == self.model.order()
        suspects = {m.decode() for m in self.run(self.broker.redis.zrange(self.broker.keys.suspects(QUEUE), 0, -1))}
        assert suspects == self.model.waiting_suspects()

    def teardown(self) -> None:
        assert self.run(check_integrity(self.broker.redis, self.broker.keys)) == []


def test_a_queue_keeps_its_order_through_every_way_back(broker: Broker, run: Run[Any]) -> None:
    QueueOrder.broker, QueueOrder.run = broker, run
    run_state_machine_as_test(QueueOrder, settings=ORDER_SETTINGS)


@pytest.fixture(autouse=True)
def _no_leftover_machine() -> Any:
    yield
    for name in ("broker", "run"):
        if name in QueueOrder.__dict__:
            delattr(QueueOrder, name)
