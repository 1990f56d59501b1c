"""Every Prometheus metric of ojs-runtime, defined once, and how they are exposed at /metrics.

Names follow the OJS observability extension (``ojs_job_enqueued_total``,
``ojs_job_duration_seconds``, ``ojs_queue_depth``) with a unit suffix. Labels are bounded:
``queue``, ``type``, ``outcome``, ``state``, ``reason``; never a job id, an argument or an error
message. Other modules import the objects below (or the small recording helpers) and never
create metrics themselves (conventions §3.13).

Client-chosen label values (``queue`` and ``type``: any name an enqueue sends) are capped where
every series is made, in ``labels()`` of the job metrics: the first ``cap`` distinct values of
each label (:func:`set_label_cap`, ``Settings.metrics_label_cap``) keep their name, later ones
are counted under ``other``. The cap holds per process; under ``ojs-run`` each process admits
its own first values.

Multiprocess mode. ``ojs-run`` forks pool processes; each one writes its samples to files of its
own in ``PROMETHEUS_MULTIPROC_DIR``, and the process that serves ``/metrics`` sums them
(prometheus_client's multiprocess mode). The supervisor calls :func:`enable_multiprocess` before
the first fork: it wipes the directory (or creates a private one) and switches prometheus_client
to file-backed values. prometheus_client picks its value class when it is first imported, which
in ``ojs-run`` happens before the command line is parsed, so the switch is made afterwards; that
is safe because every metric here has labels, so no value exists before the first
``.labels(...)`` call (a test checks this). When a child is reaped, :func:`mark_process_dead`
drops its live gauges; its counters and histograms stay in the sums.

Queue gauges (``ojs_queue_depth``, ``ojs_queue_oldest_job_age_seconds``) are kept in no process:
the ``/metrics`` handler reads them from Redis at scrape time (:class:`QueueSample`) and
:func:`render` adds them to the exposition.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUE_TIME_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)
JOB_LABELS = ("queue", "type")
OVERFLOW_LABEL = "other"
DEFAULT_LABEL_CAP = 200


class _LabelCap:
    """The distinct values admitted per client-chosen label name, first come, at most `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._admitted: dict[str, set[str]] = {name: set() for name in JOB_LABELS}

    def bound(self, names: Sequence[str], values: Sequence[object]) -> tuple[str, ...]:
        return tuple(self._one(name, str(value)) for name, value in zip(names, values, strict=True))

    def _one(self, name: str, value: str) -> str:
        admitted = self._admitted.get(name)
        if admitted is None or value in admitted:
            return value
        if len(admitted) >= self.cap:
            return OVERFLOW_LABEL
        admitted.add(value)
        return value


_label_cap = _LabelCap(DEFAULT_LABEL_CAP)


def set_label_cap(cap: int) -> None:
    """Distinct values each client-chosen label may take in this process (values already admitted
    are forgotten: call it at start-up)."""
    global _label_cap
    _label_cap = _LabelCap(cap)
    _enqueued_children.clear()


class _CappedLabels:
    """``labels()`` through the cap: the one place a job metric's series is made."""

    _labelnames: tuple[str, ...]

    def labels(self, *values: object, **by_name: object) -> Any:
        if by_name:
            values = tuple(by_name[name] for name in self._labelnames)
        return super().labels(*_label_cap.bound(self._labelnames, values))  # type: ignore[misc]


class _CappedCounter(_CappedLabels, Counter):
    pass


class _CappedHistogram(_CappedLabels, Histogram):
    pass


# --- job lifecycle (labels: queue, type) ------------------------------------------------------

JOBS_ENQUEUED = _CappedCounter("ojs_job_enqueued_total", "Jobs created (a deduplicated enqueue is not counted)", JOB_LABELS)
JOBS_STARTED = _CappedCounter("ojs_job_started_total", "Attempts started (claimed by a pool or an HTTP fetch)", JOB_LABELS)
JOBS_COMPLETED = _CappedCounter("ojs_job_completed_total", "Jobs that reached completed", JOB_LABELS)
JOBS_FAILED = _CappedCounter("ojs_job_failed_total", "Jobs that reached discarded after a failure (dead-lettered included)", JOB_LABELS)
JOBS_RETRIED = _CappedCounter("ojs_job_retried_total", "Failed attempts that will be retried", JOB_LABELS)
JOBS_DEAD_LETTERED = _CappedCounter("ojs_job_dead_lettered_total", "Jobs moved to the dead letter queue", JOB_LABELS)
JOBS_CANCELLED = _CappedCounter("ojs_job_cancelled_total", "Jobs cancelled through the API", JOB_LABELS)
JOBS_TIMED_OUT = _CappedCounter("ojs_job_timed_out_total", "Attempts that ran past their timeout (in a pool, or reaped by the scheduler)", JOB_LABELS)
JOB_DURATION = _CappedHistogram(
    "ojs_job_duration_seconds", "Handler run time of an attempt, by outcome (completed, retried, failed, "
    "dead_lettered, cancelled, released)", (*JOB_LABELS, "outcome"), buckets=DURATION_BUCKETS_S,
)
JOB_QUEUE_TIME = _CappedHistogram(
    "ojs_job_queue_time_seconds", "Wait from becoming available (enqueue, retry, requeue) to the start of "
    "the attempt", JOB_LABELS, buckets=QUEUE_TIME_BUCKETS_S,
)

# --- recovery (label: reason) -------------------------------------------------------------------

LEASES_EXPIRED = Counter(
    "ojs_leases_expired_total", "Active jobs failed by the reaper: lease (no heartbeat) or timeout "
    "(execution deadline)", ("reason",),
)
LEASE_EXPIRY_DEFERRALS = Counter(
    "ojs_lease_expiry_deferrals_total", "Times lease expiry waited a grace period for live workers to "
    "renew: outage (no scheduler step reached Redis for a while) or clock_back (Redis' clock went back)",
    ("cause",),
)
JOBS_RECOVERED = Counter(
    "ojs_jobs_recovered_total", "Jobs taken back from a pool process that ended while holding them: "
    "worker_lost (it died) or released (it was stopped)", ("reason",),
)

# --- crons (label: reason) ----------------------------------------------------------------------

CRON_TICKS_SKIPPED = Counter(
    "ojs_cron_ticks_skipped_total", "Cron ticks that created no job: overlap_skip (the previous one "
    "has not finished) or unique_conflict (a job holds the template's unique lock)", ("reason",),
)

# --- pool processes ---------------------------------------------------------------------------

POOL_SLOTS = Gauge(
    "ojs_pool_slots", "Job slots of each pool process: busy (jobs in flight) or free (it would fetch "
    "for them now)", ("state",), multiprocess_mode="liveall",
)
POOL_RESTARTS = Counter(
    "ojs_pool_restarts_total", "Pool processes replaced after an unplanned end: crashed, unresponsive, stuck",
    ("reason",),
)
POOL_RECYCLES = Counter(
    "ojs_pool_recycles_total", "Pool processes replaced on purpose: max_jobs, max_memory, directive",
    ("reason",),
)
REDIS_UP = Gauge(
    "ojs_redis_up", "1 while every pool process reaches Redis, 0 while one cannot (its calls fail)",
    ("role",), multiprocess_mode="livemin",
)
REDIS_CALL_FAILURES = Counter(
    "ojs_redis_call_failures_total", "Calls of pool processes to Redis that failed for want of a "
    "connection or a reply: fetch, heartbeat, settle, reconcile", ("operation",),
)

# --- webhooks (labels: event_type, from the fixed event catalog; outcome) -----------------------

WEBHOOK_ATTEMPTS = Counter(
    "ojs_webhook_delivery_attempts_total", "Webhook delivery attempts: delivered (2xx), retry (it will be "
    "sent again) or dead (a client error, a refused redirect, or out of attempts)", ("event_type", "outcome"),
)
WEBHOOK_DURATION = Histogram(
    "ojs_webhook_delivery_duration_seconds", "Webhook delivery attempts, request sent to response read",
    ("outcome",),
)

ALL = (
    JOBS_ENQUEUED, JOBS_STARTED, JOBS_COMPLETED, JOBS_FAILED, JOBS_RETRIED, JOBS_DEAD_LETTERED,
    JOBS_CANCELLED, JOBS_TIMED_OUT, JOB_DURATION, JOB_QUEUE_TIME, LEASES_EXPIRED, LEASE_EXPIRY_DEFERRALS,
    JOBS_RECOVERED, CRON_TICKS_SKIPPED, POOL_SLOTS, POOL_RESTARTS, POOL_RECYCLES, REDIS_UP,
    REDIS_CALL_FAILURES, WEBHOOK_ATTEMPTS, WEBHOOK_DURATION,
)

# --- recording helpers --------------------------------------------------------------------------


def job_outcome(queue: str, job_type: str, outcome: str, duration_s: float | None = None) -> None:
    """Count how an attempt ended: completed, retried, failed, dead_lettered, cancelled or
    released (the last two are counted elsewhere or not at all; they only get a duration)."""
    if outcome == "completed":
        _count(JOBS_COMPLETED, (queue, job_type))
    elif outcome == "retried":
        _count(JOBS_RETRIED, (queue, job_type))
    elif outcome in ("failed", "dead_lettered"):
        _count(JOBS_FAILED, (queue, job_type))
        if outcome == "dead_lettered":
            _count(JOBS_DEAD_LETTERED, (queue, job_type))
    if duration_s is not None:
        _observe(JOB_DURATION, (queue, job_type, outcome), max(0.0, duration_s))


def job_started(queue: str, job_type: str, fields: dict[bytes, bytes]) -> None:
    """Count a claimed job; its wait comes from the hash's ``enqueued_at`` and ``started_at`` (ms)."""
    _count(JOBS_STARTED, (queue, job_type))
    enqueued, started = fields.get(b"enqueued_at"), fields.get(b"started_at")
    if enqueued and started and enqueued.isdigit() and started.isdigit():
        _observe(JOB_QUEUE_TIME, (queue, job_type), max(0, int(started) - int(enqueued)) / 1000)


# --- gathered writes (pool processes) -----------------------------------------------------------


_CHILDREN_KEPT = 4096  # label sets whose metric child a Tally keeps at hand


class Tally:
    """Job metric writes gathered in memory and applied together.

    In a pool process every metric write goes to a file-backed value (multiprocess mode: a lock
    and an mmap write each), six per job. Gathered, a batch of jobs costs one write per metric,
    label set and histogram bucket: about a tenth of a short job's CPU in a pool. The writes are
    applied ``delay_s`` after the first one gathered (a scrape lags by that much at most) and by
    :meth:`flush` when the pool stops; a process killed outright loses that much of its counts.
    """

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self._counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}
        self._scheduled = False
        # (metric, labels) -> its child: labels() through the cap and the client's lock, once
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def count(self, counter: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (counter, labels)
        self._counts[key] = self._counts.get(key, 0.0) + amount
        self._schedule()

    def observe(self, histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
        self._observed.setdefault((histogram, labels), []).append(value)
        self._schedule()

    def flush(self) -> None:
        self._scheduled = False
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for counted, amount in counts.items():
            self._child(counted).inc(amount)
        for sampled, samples in observed.items():
            _observe_many(self._child(sampled), samples)

    def _child(self, key: tuple[Any, tuple[str, ...]]) -> Any:
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _CHILDREN_KEPT:
                self._children.clear()
            metric, labels = key
            child = self._children[key] = metric.labels(*labels)
        return child

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing would flush later
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.delay_s, self.flush)


def _observe_many(child: Histogram, values: list[float]) -> None:
    """``child.observe(v)`` for each value, as one write per bucket hit plus one for the sum.
    Uses the histogram's value objects (prometheus_client keeps them as ``_sum``, ``_buckets``
    and ``_upper_bounds``; a unit test pins this); without them, one observe per value."""
    bounds, buckets, total = (getattr(child, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    hits = [0] * len(bounds)
    for value in values:
        hits[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
    total.inc(sum(values))
    for index, n in enumerate(hits):
        if n:
            buckets[index].inc(n)


_tally: Tally | None = None


def gather_job_metrics(tally: Tally | None) -> None:
    """Route the job metrics of this process through `tally` (None: write each at once)."""
    global _tally
    _tally = tally


def _count(counter: Counter, labels: tuple[str, ...]) -> None:
    if _tally is not None:
        _tally.count(counter, labels)
    else:
        counter.labels(*labels).inc()


_enqueued_children: dict[tuple[str, str], Any] = {}  # (queue, type) -> its JOBS_ENQUEUED child


def jobs_enqueued(queue: str, job_type: str, amount: int) -> None:
    """Count created jobs. An enqueue's label set is looked up once (the cap, the client's lock),
    then kept: a producer enqueueing one job at a time pays a dict lookup."""
    child = _enqueued_children.get((queue, job_type))
    if child is None:
        if len(_enqueued_children) >= _CHILDREN_KEPT:
            _enqueued_children.clear()
        child = _enqueued_children[queue, job_type] = JOBS_ENQUEUED.labels(queue, job_type)
    child.inc(amount)


def _observe(histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
    if _tally is not None:
        _tally.observe(histogram, labels, value)
    else:
        histogram.labels(*labels).observe(value)


# --- multiprocess mode --------------------------------------------------------------------------


def enable_multiprocess() -> tuple[str, bool]:
    """Prepare ``PROMETHEUS_MULTIPROC_DIR`` (a private temp dir when it is not set) and wipe what a
    previous run left there. Call before the first fork. Returns (path, created)."""
    path = os.environ.get(MULTIPROC_ENV)
    created = not path
    if not path:
        path = tempfile.mkdtemp(prefix="ojs-metrics-")
        os.environ[MULTIPROC_ENV] = path
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.unlink(stale)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call,unused-ignore]
    return path, created


def disable_multiprocess(path: str, *, created: bool) -> None:
    """Remove the private directory :func:`enable_multiprocess` created (at supervisor exit)."""
    if created:
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a reaped child (its counters stay in the sums)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call,unused-ignore]


# --- exposition -------------------------------------------------------------------------------------


class QueueSample(msgspec.Struct, frozen=True, kw_only=True):
    """One queue as read from Redis at scrape time."""

    queue: str
    counts: dict[str, int]  # state -> jobs of the queue in that state
    oldest_age_s: float | None = None  # age of the next available job; None when there is none


class _QueueCollector:
    def __init__(self, samples: Sequence[QueueSample]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("ojs_queue_depth", "Jobs per queue per state (read from Redis at scrape "
                                  "time)", labels=("queue", "state"))
        age = GaugeMetricFamily("ojs_queue_oldest_job_age_seconds", "How long the next available job of "
                                "each queue has waited (0 when none is available)", labels=("queue",))
        for sample in self._samples:
            for state, count in sample.counts.items():
                depth.add_metric((sample.queue, state), count)
            age.add_metric((sample.queue,), sample.oldest_age_s or 0.0)
        yield depth
        yield age


def render(queues: Sequence[QueueSample] = ()) -> bytes:
    """The Prometheus text exposition: this process's metrics, or the sums over every process in
    multiprocess mode, then the queue gauges."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call,unused-ignore]
        body: bytes = generate_latest(registry)
    else:
        body = generate_latest()
    queue_registry = CollectorRegistry(auto_describe=False)
    queue_registry.register(_QueueCollector(queues))
    return body + generate_latest(queue_registry)
