"""Consistency check of one key namespace: do the job hashes, the indexes and the counters agree?

Every state transition is one Lua script, so between two scripts the store must satisfy these
invariants (the key schema is in :mod:`runtime.broker.keys`):

* every job hash has a valid state, its own id, and a queue;
* a job sits in exactly the indexes its state calls for: ``available`` in its queue's
  ``available`` set only, ``scheduled``/``retryable`` in ``delayed`` only, ``active`` in ``active``
  only, a terminal state in its queue's index of that state (``queue:<q>:completed``, ...) only,
  ``pending`` and ``waiting`` (a workflow step not enqueued yet, which is stored but neither
  indexed nor counted) in none;
* a job with ``expires_ms`` that is neither active nor terminal is in ``expiring`` (an active one
  may be, a terminal one may not), scored by its expiry; the ``delayed`` score of a retryable job is
  its ``next_attempt_at``; the ``active`` score is the earlier of lease and execution deadline;
  the ``available`` score lies in the band of the job's priority;
* ``dlq`` holds exactly the discarded jobs flagged ``dead_lettered``, and each queue's
  ``queue:<q>:dlq`` exactly those of that queue; ``queue:<q>:suspects`` holds exactly the
  available jobs of that queue flagged ``suspect`` (they must run alone);
* ``worker-jobs:<w>`` holds exactly the active jobs whose ``worker_id`` is ``w``;
* ``tenant-jobs:<t>`` (and ``rl-jobs:<key>``) holds exactly the unfinished jobs of that tenant (key);
* no index entry points at a missing job;
* each queue's ``counts`` hash equals the real number of its jobs in every OJS state (and has no
  other non-zero field: ``waiting`` jobs are not counted).

Cost: O(jobs + index entries). It SCANs (never KEYS) and reads in pipelined batches, so it does
not block the server, but it is meant for tests and for an operator checking a store after a
crash or a restore, not for a hot path. It is not a snapshot: run it against a quiescent
namespace, or transitions made while it reads show up as (transient) problems.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from runtime.broker.keys import Keys
from runtime.envelope import ALL_STATES, TERMINAL_STATES

SCAN_COUNT = 1_000
READ_BATCH = 500

_COUNTED_STATES = frozenset(s.value for s in ALL_STATES)
_VALID_STATES = _COUNTED_STATES | {"waiting"}
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
_MUST_EXPIRE = frozenset({"available", "scheduled", "retryable", "pending"})
_JOB_FIELDS = (
    "state", "queue", "id", "expires_ms", "next_attempt_at", "visible_until", "exec_deadline",
    "dead_lettered", "worker_id", "suspect", "rl_key", "cancelled_run_until", "tenant", "priority",
)
_PRIORITY_BAND = 1e13  # the available score's band per priority (lib.lua's BAND, keys.py)
_AVAILABLE_SUFFIX = ":available"
_COUNTS_SUFFIX = ":counts"
_DLQ_SUFFIX = ":dlq"
_ENDED_SUFFIXES = tuple(f":{state}" for state in sorted(_TERMINAL))


@dataclass(slots=True)
class _Job:
    state: str | None
    queue: str | None
    stored_id: str | None
    expires_ms: str | None
    next_attempt_at: str | None
    visible_until: str | None
    exec_deadline: str | None
    dead_lettered: str | None
    worker_id: str | None
    suspect: str | None
    rl_key: str | None
    cancelled_run_until: str | None
    tenant: str | None
    priority: str | None


@dataclass(slots=True)
class _Store:
    jobs: dict[str, _Job] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    # index key -> {job id -> score}
    indexes: dict[str, dict[str, float]] = field(default_factory=dict)
    # queue -> counts hash as read
    counts: dict[str, dict[str, str]] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)
    # worker id -> ids in its worker-jobs:<id> set
    held: dict[str, set[str]] = field(default_factory=dict)
    # rate-limit key -> ids in its rl-active:<key> set, and in its rl-jobs:<key> set
    rl_active: dict[str, set[str]] = field(default_factory=dict)
    rl_jobs: dict[str, set[str]] = field(default_factory=dict)
    # tenant -> ids in its tenant-jobs:<tenant> set
    tenant_jobs: dict[str, set[str]] = field(default_factory=dict)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    """The prefix is data, not a pattern: escape what SCAN MATCH would interpret."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


async def check_integrity(redis: Redis, keys: Keys) -> list[str]:
    """Every broken invariant of the namespace, as a readable line; empty when consistent."""
    store = await _load(redis, keys)
    problems = list(store.unreadable)
    problems += _check_jobs(store, keys)
    problems += _check_dangling(store, keys)
    problems += _check_counts(store, keys)
    problems += _check_held(store, keys)
    problems += _check_rate_limits(store, keys)
    problems += _check_tenants(store, keys)
    return sorted(problems)


# --- reading ---------------------------------------------------------------------------------


async def _load(redis: Redis, keys: Keys) -> _Store:
    store = _Store()
    await _load_jobs(redis, keys, store)
    await _load_rate_limit_sets(redis, keys, store)
    queue_prefix = f"{keys.prefix}queue:"
    async for raw in redis.scan_iter(match=_glob_escape(queue_prefix) + "*", count=SCAN_COUNT):
        name = _text(raw) or ""
        rest = name[len(queue_prefix):]
        if rest.endswith(_AVAILABLE_SUFFIX):
            store.queues.add(rest[: -len(_AVAILABLE_SUFFIX)])
        elif rest.endswith(_COUNTS_SUFFIX):
            store.queues.add(rest[: -len(_COUNTS_SUFFIX)])
        elif rest.endswith(_DLQ_SUFFIX):  # a queue whose only trace is its dead letter index
            store.queues.add(rest[: -len(_DLQ_SUFFIX)])
        else:
            for suffix in _ENDED_SUFFIXES:
                if rest.endswith(suffix):
                    store.queues.add(rest[: -len(suffix)])
    store.queues.update(q for q in (_text(n) for n in await redis.hkeys(keys.queues)) if q)
    store.queues.update(job.queue for job in store.jobs.values() if job.queue)
    for queue in sorted(store.queues):
        store.indexes[keys.available(queue)] = await _zset(redis, keys.available(queue))
        store.indexes[keys.queue_dlq(queue)] = await _zset(redis, keys.queue_dlq(queue))
        store.indexes[keys.suspects(queue)] = await _zset(redis, keys.suspects(queue))
        for state in sorted(_TERMINAL):
            store.indexes[keys.ended(queue, state)] = await _zset(redis, keys.ended(queue, state))
        raw_counts = await redis.hgetall(keys.counts(queue))
        store.counts[queue] = {_text(k) or "": _text(v) or "" for k, v in raw_counts.items()}
    for key in (keys.delayed, keys.active, keys.expiring, keys.dlq):
        store.indexes[key] = await _zset(redis, key)
    await _load_held(redis, keys, store)
    return store


async def _load_held(redis: Redis, keys: Keys, store: _Store) -> None:
    """The per-worker sets of held jobs (``worker-jobs:<id>``)."""
    worker_prefix = keys.worker_jobs("")
    match = _glob_escape(worker_prefix) + "*"
    async for raw in redis.scan_iter(match=match, count=SCAN_COUNT, _type="set"):
        name = _text(raw) or ""
        worker_id = name[len(worker_prefix):]
        members = {_text(m) or "" async for m in redis.sscan_iter(name, count=SCAN_COUNT)}
        store.held[worker_id] = members


async def _load_rate_limit_sets(redis: Redis, keys: Keys, store: _Store) -> None:
    for part, into in (("rl-active:", store.rl_active), ("rl-jobs:", store.rl_jobs),
                       ("tenant-jobs:", store.tenant_jobs)):
        set_prefix = keys.prefix + part
        async for raw in redis.scan_iter(match=_glob_escape(set_prefix) + "*", count=SCAN_COUNT, _type="set"):
            name = _text(raw) or ""
            into[name[len(set_prefix):]] = {_text(m) or "" async for m in redis.sscan_iter(name, count=SCAN_COUNT)}


async def _load_jobs(redis: Redis, keys: Keys, store: _Store) -> None:
    job_prefix = keys.job("")
    batch: list[str] = []
    async for raw in redis.scan_iter(match=_glob_escape(job_prefix) + "*", count=SCAN_COUNT):
        batch.append(_text(raw) or "")
        if len(batch) >= READ_BATCH:
            await _read_batch(redis, batch, len(job_prefix), store)
            batch = []
    if batch:
        await _read_batch(redis, batch, len(job_prefix), store)


async def _read_batch(redis: Redis, job_keys: list[str], cut: int, store: _Store) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for key in job_keys:
            pipe.exists(key)
            pipe.hmget(key, list(_JOB_FIELDS))
        replies = await pipe.execute(raise_on_error=False)
    for n, key in enumerate(job_keys):
        exists, reply = replies[2 * n], replies[2 * n + 1]
        job_id = key[cut:]
        if isinstance(reply, Exception):
            store.unreadable.append(f"job {job_id}: {key} is not a hash ({reply})")
        elif exists:  # else it was deleted between SCAN and this read
            store.jobs[job_id] = _Job(*(_text(v) for v in reply))


async def _zset(redis: Redis, key: str) -> dict[str, float]:
    members = redis.zscan_iter(key, count=SCAN_COUNT)
    return {_text(member) or "": float(score) async for member, score in members}


# --- checking --------------------------------------------------------------------------------


def _check_jobs(store: _Store, keys: Keys) -> list[str]:
    where: dict[str, dict[str, float]] = defaultdict(dict)
    for index, members in store.indexes.items():
        for job_id, score in members.items():
            where[job_id][index] = score
    problems: list[str] = []
    for job_id, job in store.jobs.items():
        problems += _check_job(job_id, job, where.get(job_id, {}), keys)
    return problems


def _check_job(job_id: str, job: _Job, found: dict[str, float], keys: Keys) -> list[str]:
    tag = f"job {job_id}"
    state = job.state
    if state not in _VALID_STATES:
        return [f"{tag}: invalid state {state!r}"]
    problems: list[str] = []
    if job.stored_id != job_id:
        problems.append(f"{tag}: hash field id is {job.stored_id!r}")
    if not job.queue:
        return [*problems, f"{tag}: no queue"]
    main = {
        "available": {keys.available(job.queue)},
        "scheduled": {keys.delayed},
        "retryable": {keys.delayed},
        "active": {keys.active},
    }.get(state, set())
    if state in _TERMINAL:
        main = {keys.ended(job.queue, state)}
    queue_dlq = keys.queue_dlq(job.queue)
    queue_suspects = keys.suspects(job.queue)
    lifecycle = {k for k in found if k not in (keys.expiring, keys.dlq, queue_dlq, queue_suspects)}
    for index in sorted(main - lifecycle):
        problems.append(f"{tag}: state {state!r} but not in {index}")
    for index in sorted(lifecycle - main):
        problems.append(f"{tag}: state {state!r} but also in {index}")
    problems += _check_scores(tag, state, job, found, keys)
    problems += _check_expiring(tag, state, job, found.get(keys.expiring))
    in_dlq = keys.dlq in found
    should_be_in_dlq = state == "discarded" and job.dead_lettered == "1"
    if in_dlq and not should_be_in_dlq:
        problems.append(
            f"{tag}: in {keys.dlq} but state {state!r}, dead_lettered={job.dead_lettered!r}"
        )
    elif should_be_in_dlq and not in_dlq:
        problems.append(f"{tag}: dead-lettered but not in {keys.dlq}")
    should_be_suspect = state == "available" and job.suspect == "1"
    if (queue_suspects in found) != should_be_suspect:
        problems.append(f"{tag}: state {state!r}, suspect={job.suspect!r}, "
                        f"in {queue_suspects}: {queue_suspects in found}")
    if should_be_in_dlq and queue_dlq not in found:
        problems.append(f"{tag}: dead-lettered but not in {queue_dlq}")
    elif queue_dlq in found and not should_be_in_dlq:
        problems.append(f"{tag}: in {queue_dlq} but state {state!r}, dead_lettered={job.dead_lettered!r}")
    return problems


def _check_scores(
    tag: str, state: str, job: _Job, found: dict[str, float], keys: Keys
) -> list[str]:
    if state == "retryable" and keys.delayed in found:
        due = found[keys.delayed]
        if job.next_attempt_at is None or float(job.next_attempt_at) != due:
            return [f"{tag}: delayed score {due:.0f} != next_attempt_at {job.next_attempt_at}"]
    available = keys.available(job.queue or "")
    if state == "available" and available in found and job.priority is not None:
        if not job.priority.lstrip("-").isdigit():
            return [f"{tag}: priority {job.priority!r} is not an integer"]
        low = (100 - int(job.priority)) * _PRIORITY_BAND
        if not low <= found[available] < low + _PRIORITY_BAND:
            return [f"{tag}: available score {found[available]:.0f} outside the band of priority {job.priority}"]
    if state == "active" and keys.active in found:
        if job.visible_until is None:
            return [f"{tag}: active without visible_until"]
        deadline = float(job.visible_until)
        if job.exec_deadline is not None:
            deadline = min(deadline, float(job.exec_deadline))
        if deadline != found[keys.active]:
            return [
                f"{tag}: active score {found[keys.active]:.0f} != lease/execution deadline "
                f"{deadline:.0f}"
            ]
    return []


def _check_expiring(tag: str, state: str, job: _Job, score: float | None) -> list[str]:
    if job.expires_ms is None:
        return [] if score is None else [f"{tag}: in expiring without expires_ms"]
    if state in _TERMINAL and score is not None:
        return [f"{tag}: state {state!r} but still in expiring"]
    if state == "waiting" and score is not None:
        return [f"{tag}: state 'waiting' but in expiring (expiry does not handle it)"]
    if state in _MUST_EXPIRE and score is None:
        return [f"{tag}: state {state!r} with expires_ms {job.expires_ms} but not in expiring"]
    if score is not None and score != float(job.expires_ms):
        return [f"{tag}: expiring score {score:.0f} != expires_ms {job.expires_ms}"]
    return []


def _check_dangling(store: _Store, keys: Keys) -> list[str]:
    problems = []
    for index, members in store.indexes.items():
        for job_id in members:
            if job_id not in store.jobs:
                problems.append(f"{index} holds {job_id!r} but {keys.job(job_id)} does not exist")
    return problems


def _check_held(store: _Store, keys: Keys) -> list[str]:
    problems = []
    for job_id, job in store.jobs.items():
        holder = job.worker_id
        if job.state == "active" and holder and job_id not in store.held.get(holder, ()):
            problems.append(
                f"job {job_id}: active, held by {holder!r}, but not in {keys.worker_jobs(holder)}"
            )
    for worker_id, members in store.held.items():
        for job_id in members:
            held = store.jobs.get(job_id)
            if held is None or held.state != "active" or held.worker_id != worker_id:
                what = (
                    "missing" if held is None
                    else f"state {held.state!r}, worker_id {held.worker_id!r}"
                )
                problems.append(f"{keys.worker_jobs(worker_id)} holds {job_id!r} ({what})")
    return problems


def _check_rate_limits(store: _Store, keys: Keys) -> list[str]:
    """A keyed job holds a concurrency slot while it is active (and may while it is cancelled
    with a run that may still go on), none otherwise, and is among its key's unfinished jobs
    exactly while it has not ended."""
    problems = []
    for job_id, job in store.jobs.items():
        if not job.rl_key:
            continue
        running = job_id in store.rl_active.get(job.rl_key, ())
        if job.state == "cancelled" and job.cancelled_run_until is not None and running:
            pass  # its cancelled run keeps the slot until the fetch finds the run over
        elif (job.state == "active") != running:
            problems.append(f"job {job_id}: {job.state}, but {'in' if running else 'not in'} "
                            f"{keys.prefix}rl-active:{job.rl_key}")
        listed = job_id in store.rl_jobs.get(job.rl_key, ())
        if (job.state not in _TERMINAL) != listed:
            problems.append(f"job {job_id}: {job.state}, but {'in' if listed else 'not in'} "
                            f"{keys.prefix}rl-jobs:{job.rl_key}")
    for sets, part in ((store.rl_active, "rl-active"), (store.rl_jobs, "rl-jobs")):
        for key, members in sets.items():
            for job_id in members:
                holder = store.jobs.get(job_id)
                if holder is None or holder.rl_key != key:
                    problems.append(f"{keys.prefix}{part}:{key} holds {job_id!r} "
                                    f"({'missing' if holder is None else f'its key is {holder.rl_key!r}'})")
    return problems


def _check_tenants(store: _Store, keys: Keys) -> list[str]:
    """A tenant's job is among its tenant's unfinished jobs exactly while it has not ended."""
    problems = []
    for job_id, job in store.jobs.items():
        if not job.tenant:
            continue
        listed = job_id in store.tenant_jobs.get(job.tenant, ())
        if (job.state not in _TERMINAL) != listed:
            problems.append(f"job {job_id}: {job.state}, but {'in' if listed else 'not in'} "
                            f"{keys.tenant_jobs(job.tenant)}")
    for tenant, members in store.tenant_jobs.items():
        for job_id in members:
            listed_job = store.jobs.get(job_id)
            if listed_job is None or listed_job.tenant != tenant:
                what = "missing" if listed_job is None else f"its tenant is {listed_job.tenant!r}"
                problems.append(f"{keys.tenant_jobs(tenant)} holds {job_id!r} ({what})")
    return problems


def _check_counts(store: _Store, keys: Keys) -> list[str]:
    real: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job in store.jobs.values():
        if job.queue and job.state in _COUNTED_STATES:
            real[job.queue][job.state] += 1
    problems = []
    for queue in sorted(store.queues):
        stored = store.counts.get(queue, {})
        for state in sorted(_COUNTED_STATES | set(stored)):
            try:
                value = int(stored.get(state, "0"))
            except ValueError:
                problems.append(
                    f"{keys.counts(queue)}: {state} = {stored[state]!r} is not a number"
                )
                continue
            actual = real[queue][state]
            if value != actual:
                problems.append(
                    f"{keys.counts(queue)}: {state} = {value}, but {actual} such jobs exist"
                )
    return problems
