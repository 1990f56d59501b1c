"""One pool process: a uvloop event loop running up to `concurrency` jobs at once.

Forked by the supervisor, it builds everything itself (conventions §3.4): it imports the handlers
module, connects to Redis, composes the middleware chain once, and then

* fetches for its free slots, with per-queue quotas from :mod:`runtime.fairness`, in one fetch
  call, whenever it is woken: by a message on its queues' notify channels (an idle pool starts a
  new job within milliseconds), when a job frees a slot, and by a safety re-check every second;
  it never polls in a sleep loop;
* while its handlers are short (recent run times under ``prefetch_below_s``), also claims up to
  ``prefetch`` jobs ahead: they wait, leased and heartbeated like running jobs, in a local buffer,
  and a freed slot starts the next one without a round trip. Jobs that run longer get no
  prefetch, and a prefetched job still waiting after ``prefetch_hold_s`` goes back to the queue,
  so a claimed job never waits long behind a slow one; on a stop the buffer is handed back at
  once, without spending attempts;
* never claims a job of a type whose handler ``concurrency`` is reached (the fetch names the
  room each limited type has left), and starts a buffered job only when its type has room. A
  job's timeout counts from its handler's start; the broker's backstop deadline for the pool's
  claims is extended by ``prefetch_hold_s`` + ``timeout_grace_s`` and a margin to match;
* keys its running and buffered work by claim (the fencing token of each claim), not by job id:
  a job whose lease lapsed and that this pool claimed again is two runs, each heartbeated,
  settled and cleaned up under its own claim;
* runs async handlers as tasks, sync handlers in a thread pool (:mod:`runtime.executor`);
* heartbeats once per interval for all its jobs, from the event loop thread: the leases move
  forward and cancelled jobs are stopped. A CPU-bound pure-Python sync handler cannot starve
  the loop, since the GIL changes hands every ``sys.getswitchinterval()`` (5 ms). A C extension
  that holds the GIL for long can; the liveness record then goes stale, and the supervisor kills
  the process after ``--liveness-timeout`` and releases its jobs;
* settles outcomes through the batcher: acks and nacks of the same few milliseconds go to Redis
  in one call each; a call that cannot reach Redis is sent again with backoff for up to a lease,
  and the job stays in the heartbeats (and in ``active``) until its outcome lands;
* after a fetch whose outcome is unknown (its reply was lost: it may have claimed jobs that no
  one here knows of), reconciles with what Redis says this worker holds before it fetches again,
  and hands back at once, without spending an attempt, every claim it does not know;
* reports a Redis it cannot reach (:mod:`runtime.redis_link`): one warning per outage, the
  ``ojs_redis_up`` gauge, and ``/ready``;
* fails a job it cannot decode (its envelope or its checkpoint) alone, as non-retryable. If the
  pool's own loop crashes, the jobs it was running are not handed back (that would give their
  attempt back and hide the crash): they are left to the worker-loss path, which the supervisor
  takes for a pool that exits with code 1;
* on SIGTERM, a ``terminate`` directive or after ``max_jobs`` jobs: stops fetching, gives its
  running jobs ``drain_timeout_s`` to finish, then cancels them and hands them back without
  spending their attempt. SIGTSTP / SIGCONT switch to ``quiet`` (no fetches) and back.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import uvloop

from runtime import fairness, handlers, logs, metrics, timefmt, tracing
from runtime.broker import BACKEND_ERRORS, failures
from runtime.broker.clients import redis_client
from runtime.broker.core import Broker, Completion, Failure
from runtime.broker.pool_ops import Batcher, held_claims, listen_for_work, release_worker
from runtime.broker.wire import CommandNotSent
from runtime.claimed_job import job_of_hash
from runtime.config import Settings
from runtime.context import CANCELLED, SHUTDOWN, JobContext, ProgressThrottle, ProgressUpdate
from runtime.envelope import ErrorInfo, decode_checkpoint
from runtime.executor import (
    Completed,
    Failed,
    Outcome,
    Stuck,
    Terminal,
    execute,
    observe,
    settle,
)
from runtime.handlers import Registry
from runtime.liveness import EXIT_BOOT_ERROR, EXIT_OK, Board, Liveness, Phase
from runtime.middleware import compose, notify
from runtime.pool_membership import PoolMembership
from runtime.redis_link import RedisLink

logger = logging.getLogger(__name__)

EXIT_CRASH = 1


class PoolConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a pool process needs. Built once from the command line; the supervisor copies it for
    each process it forks, with that process's worker id."""

    module: str
    settings: Settings
    worker_id: str = ""
    queues: tuple[tuple[str, int], ...] = ()  # (name, weight); empty: the handlers' queues + default
    strategy: str = fairness.WEIGHTED
    concurrency: int = 10
    max_jobs: int = 0  # recycle the process after this many jobs; 0: never
    drain_timeout_s: float = 25.0
    cancel_deadline_s: float = 5.0  # after the drain: how long cancelled handlers get to unwind
    timeout_grace_s: float = 5.0  # a sync handler past its timeout, before the process is replaced
    heartbeat_interval_s: float = 5.0
    lease_ms: int = 60_000
    recheck_interval_s: float = 1.0
    progress_interval_s: float = 1.0
    ack_window_s: float = 0.002
    prefetch: int | None = None  # jobs claimed ahead of free slots while jobs are short; None: concurrency
    prefetch_below_s: float = 0.05  # "short": the pool's recent mean handler run time is below this
    prefetch_hold_s: float = 0.2  # a prefetched job not started by then goes back to the queue

    def stop_deadline_s(self) -> float:
        """How long a pool process may take to end once the supervisor stops it: its drain, the
        cancelled handlers' unwinding, then a margin; past it, the supervisor kills it."""
        return self.drain_timeout_s + self.cancel_deadline_s + STOP_MARGIN_S

    def stuck_retry_floor_ms(self) -> int:
        """The least delay before the retry of a job whose sync handler is stuck past its timeout.
        Its thread cannot be stopped and runs until the process ends: the supervisor sees the
        pool stuck within a tick and stops it, so the process is gone within the stop deadline;
        the retry must not start before then, beside it. A margin more for a loaded host and
        for the clocks of other hosts, whose schedulers make the retry due."""
        return round((self.stop_deadline_s() + STUCK_NOTICE_S) * 1000)


STOP_MARGIN_S = 5.0  # beyond a pool's own drain + cancel deadline, before it is killed
STUCK_NOTICE_S = 5.0  # the supervisor's tick, a loaded host and the skew of other hosts' clocks
# The broker's execution deadline for a pool's claims, past the pool's own: its nack of a stuck
# job (with the retry's floor) must land first, past the middleware around the handler and the
# skew between this host's clock, which sets the deadline, and the reaping scheduler's.
BACKSTOP_MARGIN_S = STUCK_NOTICE_S


class _Running:
    __slots__ = ("ctx", "task", "interruptible", "executing")

    def __init__(self, ctx: JobContext, task: asyncio.Task[None], interruptible: bool) -> None:
        self.ctx, self.task, self.interruptible, self.executing = ctx, task, interruptible, True


def main(config: PoolConfig, liveness: Liveness, board: Board | None = None) -> int:
    """Entry point of a forked pool process; returns its exit code."""
    liveness.notify(Phase.BOOT)
    metrics.set_label_cap(config.settings.metrics_label_cap)
    try:
        registry = handlers.load(config.module)
    except handlers.ModuleImportError as err:  # one line says what and where: no traceback
        logger.critical("%s", err)
        return EXIT_BOOT_ERROR
    # Not closed on purpose: the process ends with os._exit right after, and closing the loop
    # would wait forever on a handler that swallows its cancellation.
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        return runner.run(Pool(config, registry=registry, liveness=liveness, board=board).run())
    except Exception:
        logger.exception("pool process %s crashed", config.worker_id)
        return EXIT_CRASH


class Pool:
    """The fetch loop, the running jobs and the background loops of one pool process."""

    def __init__(
        self, config: PoolConfig, *, registry: Registry, liveness: Liveness, board: Board | None = None,
    ) -> None:
        self.config, self.registry, self.liveness = config, registry, liveness
        self.board = board  # where the HTTP process reads when a pool last fetched (for /ready)
        self.worker_id = config.worker_id
        named = config.queues or tuple((name, 1) for name in registry.queues())
        self.queues = [name for name, _ in named]
        self.weights = [weight for _, weight in named]
        self.scores = fairness.initial_scores(len(named))
        self.strategy = config.strategy  # an operator's pool definition may change it (and the weights)
        # Both keyed by claim (the fencing token), never by job id: one job can have two runs here
        # (a lapsed lease, claimed again), each with its own lease, settle and cleanup.
        self.active: dict[str, _Running] = {}  # claimed and not yet settled (heartbeats keep their leases)
        self.executing = 0  # of those, the ones whose handler still runs: what takes a slot
        # Prefetched, not started: claim -> (claimed job hash, monotonic time of the claim, the
        # job's own lease in ms or None).
        self.ready: collections.OrderedDict[str, tuple[dict[bytes, bytes], float, int | None]] = (
            collections.OrderedDict())
        # Per-type concurrency of the handlers that declare one; empty (the common case): the
        # fetch and the start cost nothing more.
        self.type_limits = {name: spec.concurrency for name, spec in registry.handlers.items() if spec.concurrency}
        # A claimed job may wait up to prefetch_hold_s before its handler starts, and a sync
        # handler past its timeout gets timeout_grace_s: the broker's backstop waits that long
        # more, and a margin, so that the pool's own nack of a timed-out or stuck job (whose
        # retry waits for the stuck thread's process to end) lands before the backstop's.
        self.exec_grace_ms = round((config.prefetch_hold_s + config.timeout_grace_s + BACKSTOP_MARGIN_S) * 1000)
        self.hold_timer: asyncio.TimerHandle | None = None
        # The claim of a suspect (a job that was running when its process died) while it runs:
        # it runs alone, so nothing else is claimed until it is settled.
        self.alone: str | None = None
        # A suspect waits in one of our queues: claim nothing until idle, then take it (see
        # _look_for_suspects).
        self.make_way = False
        self.prefetch = config.concurrency if config.prefetch is None else config.prefetch
        self.mean_run_s: float | None = None  # moving mean of handler run times (prefetch or not)
        self.state = "running"  # reported in heartbeats: running | quiet | terminate
        self.phase = Phase.READY
        self.started = 0
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.beat_soon = asyncio.Event()
        self.threads = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="ojs-job")
        # A fetch whose reply was lost may have claimed jobs: look before the next fetch. So after
        # every outage: a failover's new primary may lack the last writes the old one answered
        # (a release, an ack), and hold jobs for this worker that no run here knows.
        self.reconcile_needed = False
        # A fetch whose outcome is unknown may also run late: a stalled Redis still reads it off
        # the closed socket, perhaps after serving the look (another connection). So one more
        # look follows, a re-check interval later.
        self.look_again = False
        self.link = RedisLink(f"pool {self.worker_id}", board, on_back=self._after_outage)
        # Claims handed to the batcher outside `active` (hand-backs, rejects) until they land,
        # and those whose settle was given up (the reaper's now): not "unknown" to a reconcile.
        self.settling: set[str] = set()
        self.abandoned: set[str] = set()
        self.redis = redis_client(config.settings)
        self.broker = Broker(self.redis, config.settings)
        self.pool_read: asyncio.Future[tuple[list[int], str] | None] | None = None
        self.membership = PoolMembership(
            self.broker, worker_id=self.worker_id, pool=config.settings.pool_name, queues=self.queues,
            weights=self.weights, strategy=config.strategy, concurrency=config.concurrency,
        )
        self.batcher = Batcher(self.broker, window_s=config.ack_window_s, settle_for_s=config.lease_ms / 1000,
                               on_trouble=self._settle_trouble)
        self.terminal = terminal = Terminal(registry, threads=self.threads, grace_s=config.timeout_grace_s)
        self.chain = compose(registry.middleware, terminal)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGTSTP, self.quiet)
        loop.add_signal_handler(signal.SIGCONT, self.resume)
        tally = metrics.Tally()
        metrics.gather_job_metrics(tally)
        notify(self.registry.observers, "on_worker_boot", self.worker_id)
        background = [loop.create_task(c) for c in (self._notifications(), self._ticks(), self._heartbeats())]
        logger.info("pool %s ready: queues %s (%s), concurrency %d", self.worker_id,
                    ",".join(f"{q}:{w}" for q, w in zip(self.queues, self.weights, strict=True)),
                    self.config.strategy, self.config.concurrency)
        crashed = False
        try:
            await self._fetch_loop()
            await self._drain()
        except Exception:
            crashed = True
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if crashed:
                self._hand_back_ready(list(self.ready))  # never started: nothing was lost
            await self.batcher.close(grace_s=self.config.cancel_deadline_s)
            await asyncio.sleep(0)  # the last settled jobs record their outcome
            tally.flush()
            notify(self.registry.observers, "on_worker_shutdown", self.worker_id)
            if crashed:
                # Not `release`: that gives the attempt back, and a job that crashes its pool
                # would come back forever. The running jobs stay held by this worker id for
                # the worker-loss path (the supervisor's, on exit code 1; else the lease reaper).
                logger.error("pool %s crashed with %d job(s) running: left to the worker-loss path",
                             self.worker_id, len(self.active))
            else:
                if self.pool_read is not None:  # a pool definition read still on its way
                    await asyncio.wait([self.pool_read], timeout=self.config.cancel_deadline_s)
                    if self.pool_read.done() and not self.pool_read.cancelled():
                        self.pool_read.exception()  # seen: its failure needs no report now
                await self._deregister()
            await self.broker.close()
            await self.redis.aclose()
        return EXIT_OK

    # --- control (also the signal handlers: they only set state and events) ------------------

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def quiet(self) -> None:
        if self.state == "running":
            self.state = "quiet"

    def resume(self) -> None:
        if self.state == "quiet":
            self.state = "running"
            self.wake.set()

    # --- fetching ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self.stopping.is_set():
            await self.wake.wait()
            self.wake.clear()  # before the fetch: a wake-up during the fetch is not lost
            if self.reconcile_needed and not await self._reconcile():
                continue  # Redis still does not answer: the next re-check tries again
            wanted = self._wanted()
            if wanted > 0 and self.state == "running" and not self.stopping.is_set():
                await self._fetch(wanted)

    def _free_slots(self) -> int:
        free = self.config.concurrency - self.executing
        if self.config.max_jobs:
            free = min(free, self.config.max_jobs - self.started)
        return free

    def _wanted(self) -> int:
        """Jobs to claim now: the free slots the buffer does not cover, plus, while jobs are short,
        a refill of the buffer once it is half empty (one call for many jobs, not one per job)."""
        if self.alone is not None or self.make_way:
            if self.active or self.ready:  # nothing else is claimed meanwhile
                return 0
            self.alone, self.make_way = None, False  # idle now: this fetch may take a suspect
        uncovered = self.config.concurrency - self.executing - len(self.ready)
        short = self.mean_run_s is not None and self.mean_run_s < self.config.prefetch_below_s
        if not short or self.prefetch == 0:
            wanted = uncovered
        elif uncovered <= 0 and 2 * len(self.ready) > self.prefetch:
            wanted = 0
        else:
            wanted = uncovered + self.prefetch
        if self.config.max_jobs:
            wanted = min(wanted, self.config.max_jobs - self.started - len(self.ready))
        return wanted

    async def _fetch(self, count: int) -> None:
        quotas = None
        if self.strategy == fairness.WEIGHTED and len(self.queues) > 1:
            quotas, self.scores = fairness.quotas(self.weights, self.scores, count)
        try:
            claimed = await self.broker.fetch(
                self.queues, count=count, worker_id=self.worker_id, visibility_ms=self.config.lease_ms,
                quotas=quotas, type_room=self._type_room(), exec_grace_ms=self.exec_grace_ms,
                idle=not self.active and not self.ready, lean=True,
            )
        except BACKEND_ERRORS as err:
            if not isinstance(err, CommandNotSent):
                # it may have run, or run yet: jobs claimed with no one to run them
                self.reconcile_needed = self.look_again = True
            self.link.failed("fetch", err)
            logger.debug("fetch failed (%s); the next re-check tries again", err)
            return
        except Exception:
            logger.exception("fetch failed; the next re-check tries again")
            return
        self.link.answered()
        if self.board is not None:
            self.board.fetched()
        claimed_at = time.monotonic()
        for fields in claimed:
            visibility = fields.get(b"visibility_timeout_ms", b"")
            lease_ms = int(visibility) if visibility.isdigit() else None
            claim = _claim_of(fields)
            self.ready[claim] = (fields, claimed_at, lease_ms)
            if fields.get(b"suspect"):  # then the only job claimed: see Broker.fetch
                self.alone = claim
            if lease_ms and lease_ms < 3000 * self.config.heartbeat_interval_s:
                self.beat_soon.set()
        if self.stopping.is_set():  # a stop arrived while the fetch was on its way
            self._hand_back_ready(list(self.ready))
        self._start_ready()
        if self.ready and self.hold_timer is None:
            self.hold_timer = asyncio.get_running_loop().call_later(self.config.prefetch_hold_s, self._expire_ready)

    def _type_room(self) -> dict[str, int] | None:
        """For each type with a concurrency limit: how many more this pool can start (the
        running ones and the buffered ones count). None when no handler declares a limit."""
        if not self.type_limits:
            return None
        room = dict(self.type_limits)
        for run in self.active.values():
            if run.executing and run.ctx.job.type in room:
                room[run.ctx.job.type] -= 1
        for fields, _, _ in self.ready.values():
            job_type = fields.get(b"type", b"").decode()
            if job_type in room:
                room[job_type] -= 1
        return room

    def _next_startable(self) -> str | None:
        """The oldest buffered claim whose type has room (any, when no type is limited)."""
        if not self.type_limits:
            return next(iter(self.ready), None)
        busy = collections.Counter(
            run.ctx.job.type for run in self.active.values() if run.executing and run.ctx.job.type in self.type_limits)
        for claim, (fields, _, _) in self.ready.items():
            job_type = fields.get(b"type", b"").decode()
            limit = self.type_limits.get(job_type)
            if limit is None or busy[job_type] < limit:
                return claim
        return None  # what waits stays leased and heartbeated, and goes back after prefetch_hold_s

    def _start_ready(self) -> None:
        while self.ready and self._free_slots() > 0 and not self.stopping.is_set() and self.state != "terminate":
            claim = self._next_startable()
            if claim is None:
                return
            fields, _claimed_at, _lease_ms = self.ready.pop(claim)
            self._start(claim, fields)

    def _expire_ready(self) -> None:
        """Prefetched jobs still waiting after ``prefetch_hold_s``: the slots turned out busy with
        longer jobs. Hand the waiting ones to other workers and prefetch no more until recent
        jobs are short again."""
        self.hold_timer = None
        if not self.ready:
            return
        now = time.monotonic()
        stale = [claim for claim, (_, claimed_at, _) in self.ready.items()
                 if now - claimed_at >= self.config.prefetch_hold_s]
        if stale:
            self.mean_run_s = max(self.mean_run_s or 0.0, self.config.prefetch_hold_s)
            self._hand_back_ready(stale)
        if self.ready:
            oldest = min(claimed_at for _, claimed_at, _ in self.ready.values())
            self.hold_timer = asyncio.get_running_loop().call_later(
                max(0.0, oldest + self.config.prefetch_hold_s - now), self._expire_ready)

    def _hand_back_ready(self, claims: list[str]) -> None:
        """Release prefetched jobs that did not start: other workers can take them at once, and
        their attempt is not spent (they never ran, so no error is recorded either)."""
        for claim in claims:
            fields, _claimed_at, _lease_ms = self.ready.pop(claim)
            self._release(fields.get(b"id", b"").decode(), claim, _attempt_of(fields))
        if claims:
            logger.info("pool %s: handed back %d prefetched job(s)", self.worker_id, len(claims))

    def _release(self, job_id: str, claim: str, attempt: int | None) -> None:
        self._fail_outside_active(Failure(job_id=job_id, verdict="release", worker_id=self.worker_id,
                                          attempt=attempt, claim=claim))

    def _fail_outside_active(self, failure: Failure) -> None:
        """A nack for a claim no run holds; known as settling until it lands (see _reconcile)."""
        self.settling.add(failure.claim)
        self.batcher.fail(failure).add_done_callback(lambda _f: self.settling.discard(failure.claim))

    async def _reconcile(self) -> bool:
        """Hand back the claims Redis says this worker holds and no run or buffer here knows: a
        fetch whose reply was lost made them, and nothing would run or heartbeat them. They never
        started, so their attempt is given back. False when Redis could not be asked."""
        try:
            held = await held_claims(self.broker, self.worker_id)
        except BACKEND_ERRORS as err:
            self.link.failed("reconcile", err)
            return False
        # Before the answer is noted: an outage that ends with it asks for a look of its own
        self.reconcile_needed = False
        self.link.answered()
        if self.look_again:
            self.look_again = False
            asyncio.get_running_loop().call_later(self.config.recheck_interval_s, self._after_outage)
        known = self.active.keys() | self.ready.keys() | self.settling
        self.abandoned &= held.keys()
        unknown = {claim: job for claim, job in held.items() if claim not in known and claim not in self.abandoned}
        for claim, (job_id, attempt) in unknown.items():
            self._release(job_id, claim, attempt)
        if unknown:
            logger.warning("pool %s: %d job(s) claimed by a fetch whose reply was lost; handed back",
                           self.worker_id, len(unknown))
        return True

    def _after_outage(self) -> None:
        self.reconcile_needed = True
        self.wake.set()

    def _settle_trouble(self, err: Exception | None) -> None:
        if err is None:
            self.link.answered()
        else:
            self.link.failed("settle", err)

    def _start(self, claim: str, fields: dict[bytes, bytes]) -> None:
        loop = asyncio.get_running_loop()
        # A hand-written hash (or one an older version stored) may not decode: that job fails
        # alone, never the process.
        try:
            job = job_of_hash(fields)
        except (msgspec.MsgspecError, ValueError) as err:
            self._reject(fields, f"the job is not a valid envelope: {err}")
            return
        checkpoint = fields.get(b"checkpoint")
        try:
            last_checkpoint = decode_checkpoint(checkpoint) if checkpoint else None
        except (msgspec.MsgspecError, ValueError) as err:
            self._reject(fields, f"its checkpoint is not JSON this runtime can decode: {err}")
            return
        spec = self.registry.handlers.get(job.type)
        timeout_s = job.timeout_ms / 1000 if job.timeout_ms else (spec.timeout_s if spec else None)
        ctx = JobContext(
            job, worker_id=self.worker_id, loop=loop, timeout_s=timeout_s,
            progress=ProgressThrottle(job.id, sink=functools.partial(self._write_progress, claim),
                                      interval_s=self.config.progress_interval_s),
            last_checkpoint=last_checkpoint,
            claim=claim,
        )
        if tracing.enabled() and job.workflow_id is not None:
            index = fields.get(b"wf_index")
            ctx.workflow_step = int(index) if index is not None and index.isdigit() else None
            ctx.step_links = tuple((fields.get(b"step_traces") or b"").decode().split())
        metrics.job_started(job.queue, job.type, fields)
        self.liveness.jobs.started(job.id, claim)  # recorded before the handler's first step
        task = loop.create_task(self._run_job(ctx), name=f"job:{job.id}")
        self.active[claim] = _Running(ctx, task, interruptible=spec is None or spec.is_async)
        self.executing += 1
        self.started += 1
        if self.config.max_jobs and self.started >= self.config.max_jobs:
            logger.info("pool %s started %d jobs: recycling", self.worker_id, self.started)
            metrics.POOL_RECYCLES.labels("max_jobs").inc()
            self.request_stop()

    # --- running and settling ------------------------------------------------------------------

    async def _run_job(self, ctx: JobContext) -> None:
        job = ctx.job  # this task's log lines (the handler's too) carry the job's fields
        logs.JOB.set(logs.JobFields(job_id=job.id, type=job.type, queue=job.queue, attempt=job.attempt,
                                    worker_id=self.worker_id, traceparent=ctx.traceparent))
        run = self.active[ctx.claim]
        try:
            outcome = await execute(ctx, self.chain, self.registry.handlers)
            if ctx.stuck_after_s is not None:  # whatever middleware made of it: the thread runs on
                self._go_stuck(ctx)  # before its slot frees: nothing more starts in this process
            self._slot_freed(run)  # the next job starts while this one's ack is on its way
            await ctx.flush_progress()
            if ctx.span_traceparent is not None and ctx.job.workflow_id is not None and tracing.enabled():
                await self._record_step_trace(ctx.job.id, ctx.span_traceparent)
            await self._settle(ctx, outcome)
        finally:
            self._slot_freed(run)
            self.active.pop(ctx.claim, None)  # this run's entry only: a newer claim keeps its own
            self.liveness.jobs.settled(ctx.claim)
            if self.alone is not None or self.make_way:
                self.wake.set()  # the suspect's run is over, or we may be idle now: claim again

    def _go_stuck(self, ctx: JobContext) -> None:
        """A sync handler ignored its timeout: its thread will not come back, so this process
        takes nothing more and tells the supervisor, which stops it (its other jobs get the
        drain grace)."""
        logger.error("job %s: its sync handler ignored the timeout; this process will be replaced",
                     ctx.job.id, extra=_job_extra(ctx))
        self.phase = Phase.STUCK
        self.liveness.notify(Phase.STUCK)
        self.state = "terminate"  # no more fetches or starts
        self._hand_back_ready(list(self.ready))

    async def _record_step_trace(self, job_id: str, traceparent: str) -> None:
        """A traced workflow step's span context on its job, before its ack: advance.lua hands
        it to the steps that waited for it (their spans link to it). Traced runs only, and
        best effort: a lost write loses a link, never the job."""
        try:
            await self.redis.hset(self.broker.keys.job(job_id), "trace", traceparent)
        except BACKEND_ERRORS as err:
            logger.debug("job %s: its trace context was not recorded: %s", job_id, err)

    def _slot_freed(self, run: _Running) -> None:
        if run.executing:
            run.executing = False
            self.executing -= 1
            self.liveness.jobs.returned(run.ctx.claim)
            took_s = time.monotonic() - run.ctx.started_s
            self.mean_run_s = took_s if self.mean_run_s is None else 0.8 * self.mean_run_s + 0.2 * took_s
            self._start_ready()
            self.wake.set()

    async def _settle(self, ctx: JobContext, outcome: Outcome) -> None:
        _log_outcome(ctx, outcome)
        item = settle(outcome, ctx, worker_id=self.worker_id, now_ms=timefmt.now_ms())
        if isinstance(outcome, Stuck) and isinstance(item, Failure):
            # Its handler still runs, and will until this process ends: a retry waits for that.
            item = msgspec.structs.replace(item, min_delay_ms=self.config.stuck_retry_floor_ms())
        result = None
        if item is not None:
            result = await (self.batcher.ack(item) if isinstance(item, Completion) else self.batcher.fail(item))
        observe(ctx, outcome, item, result)
        if isinstance(result, BACKEND_ERRORS):
            self.abandoned.add(ctx.claim)  # given up after a lease: the reaper's, not a reconcile's
        if isinstance(result, Exception):
            # Typically a conflict: the job was cancelled, or the reaper failed it on its timeout.
            logger.info("job %s not settled by this worker: %s", ctx.job.id, result, extra=_job_extra(ctx))

    def _reject(self, fields: dict[bytes, bytes], why: str) -> None:
        job_id = fields.get(b"id", b"").decode(errors="replace")
        logger.error("job %s cannot be run (%s): failing it", job_id, why)
        error = failures.error_record(ErrorInfo(code="handler_error", type="InvalidJob", message=why,
                                                retryable=False), timefmt.now_ms())
        self._fail_outside_active(Failure(job_id=job_id, verdict="nonretryable", error=error, worker_id=self.worker_id,
                                          attempt=_attempt_of(fields), claim=_claim_of(fields)))

    async def _write_progress(self, claim: str, job_id: str, update: ProgressUpdate) -> None:
        await self.broker.progress(
            job_id, value=update.value, message=update.message, data=update.data, checkpoint=update.checkpoint,
            claim=claim,
        )

    def _cancel(self, job_id: str) -> None:
        """The job was cancelled: drop its buffered claims and stop every run of it."""
        for claim, (fields, _, _) in list(self.ready.items()):
            if fields.get(b"id", b"").decode() == job_id:  # prefetched, not started: nothing to stop
                del self.ready[claim]
                logger.info("job %s was cancelled before it started", job_id)
        for run in self.active.values():
            if run.ctx.job.id != job_id or not run.executing:
                continue
            logger.info("job %s was cancelled; stopping its handler", job_id, extra=_job_extra(run.ctx))
            run.ctx.request_stop(CANCELLED)
            if run.interruptible:
                run.task.cancel()

    # --- background loops ----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await self._beat()
            await self._follow_pool()
            leases = [r.ctx.job.visibility_timeout_ms or self.config.lease_ms for r in self.active.values()]
            leases += [lease_ms for _, _, lease_ms in self.ready.values() if lease_ms]
            interval_s = min(self.config.heartbeat_interval_s, min([self.config.lease_ms, *leases]) / 3000)
            self.beat_soon.clear()
            # asyncio.timeout, not wait_for: on 3.11 a wait_for whose inner wait ends as the task
            # is cancelled returns instead of raising, and this loop would outlive the pool's stop.
            try:
                async with asyncio.timeout(max(0.05, interval_s)):
                    await self.beat_soon.wait()
            except TimeoutError:
                pass

    async def _follow_pool(self) -> None:
        """The pool's stored definition, if an operator changed it: new weights and strategy.
        The read is shielded: cancelling the heartbeats at shutdown must not cut a command off
        half-way, which would leave its reply on a pooled connection for the next command
        (the deregistration) to read."""
        if self.stopping.is_set():
            return
        self.pool_read = asyncio.ensure_future(self.membership.refresh())
        try:
            changed = await asyncio.shield(self.pool_read)
        except BACKEND_ERRORS as err:
            logger.debug("pool definition not read (%s); again at the next beat", err)
            return
        if changed is not None and changed != (self.weights, self.strategy):
            self.weights, self.strategy = changed
            self.scores = fairness.initial_scores(len(self.weights))
            logger.info("pool %s: queues %s (%s), from pool %s's definition", self.worker_id,
                        ",".join(f"{q}:{w}" for q, w in zip(self.queues, self.weights, strict=True)),
                        self.strategy, self.config.settings.pool_name)

    async def _beat(self) -> None:
        try:
            # Every claim with its own token: a run whose claim went stale is not extended, and
            # a newer claim of the same job is.
            beat = await self.broker.heartbeat(
                self.worker_id,
                [*(r.ctx.job.id for r in self.active.values()),
                 *(fields.get(b"id", b"").decode() for fields, _, _ in self.ready.values())],
                state=self.state, visibility_ms=self.config.lease_ms,
                active_count=len(self.active) + len(self.ready), claims=[*self.active, *self.ready],
                interval_ms=round(self.config.heartbeat_interval_s * 1000),
            )
        except BACKEND_ERRORS as err:
            self.link.failed("heartbeat", err)
            logger.debug("heartbeat failed (%s); retrying at the next interval", err)
            return
        except Exception:
            logger.exception("heartbeat failed; retrying at the next interval")
            return
        self.link.answered()
        for job_id in beat.cancelled:
            self._cancel(job_id)
        if beat.directive == "terminate":
            if not self.stopping.is_set():
                metrics.POOL_RECYCLES.labels("directive").inc()
            self.request_stop()
        elif beat.directive == "quiet":
            self.quiet()

    async def _ticks(self) -> None:
        while True:
            self.liveness.notify(self.phase)
            self._report_slots()
            self.wake.set()  # the safety re-check: a lost notification costs one interval at most
            await self._look_for_suspects()
            await asyncio.sleep(self.config.recheck_interval_s)

    async def _look_for_suspects(self) -> None:
        """A suspect is only given to an idle pool, and a pool busy with a steady backlog is never
        idle: so once per re-check a busy pool looks, and if a suspect waits in one of its queues
        it claims nothing more until its running jobs are done, then takes it."""
        if self.make_way or self.alone is not None or not (self.active or self.ready):
            return
        try:
            async with asyncio.timeout(self.config.recheck_interval_s):  # not wait_for: see _heartbeats
                waiting = await self.broker.suspects_waiting(self.queues)
        except BACKEND_ERRORS:  # TimeoutError (the look's own deadline) is one
            return  # the fetch path reports Redis trouble; this look is only an optimisation
        if waiting:
            logger.info("pool %s: a job that must run alone is waiting; finishing the running ones first",
                        self.worker_id)
            self.make_way = True

    def _report_slots(self) -> None:
        """Busy and free slots for the metrics; and for /ready, a pool with every slot busy has no
        reason to fetch, so it is not stalled."""
        fetching = self.state == "running" and not self.stopping.is_set()
        free = self._free_slots()
        metrics.POOL_SLOTS.labels("busy").set(self.executing)
        metrics.POOL_SLOTS.labels("free").set(max(0, free) if fetching else 0)
        if fetching and free <= 0 and self.board is not None:
            self.board.fetched()

    async def _notifications(self) -> None:
        await listen_for_work(self.broker, self.queues, self.wake.set)

    # --- stopping ------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self.phase is Phase.READY:
            self.phase = Phase.DRAINING
        self.liveness.notify(self.phase)
        self.state = "terminate"
        self._hand_back_ready(list(self.ready))
        await self._beat()  # the broker refuses further fetches for this worker from now on
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.active and (left_s := deadline - time.monotonic()) > 0:
            logger.info("pool %s draining: %d job(s) running, %.0fs left", self.worker_id, len(self.active), left_s)
            await asyncio.wait([r.task for r in self.active.values()], timeout=min(left_s, 5.0))
        if not self.active:
            return
        logger.warning("pool %s: drain timeout, handing back %d job(s)", self.worker_id, len(self.active))
        for run in list(self.active.values()):
            if run.executing:
                run.ctx.request_stop(SHUTDOWN)
                run.task.cancel()
        _done, pending = await asyncio.wait(
            [r.task for r in self.active.values()], timeout=self.config.cancel_deadline_s,
        )
        if pending:
            logger.warning("%d handler(s) ignored cancellation", len(pending))

    async def _deregister(self) -> None:
        """Hand back anything still held (normally nothing) and remove the worker entry. Not
        while a handler still runs, in a thread or a task that ignored its cancellation: its
        job must not go back to the queue before this process ends, so what is held stays held
        by this worker id, for the supervisor to hand back once the process is gone (or, without
        one, for the lease reaper)."""
        unfinished = self.terminal.threads_running() + sum(not r.task.done() for r in self.active.values())
        if unfinished:
            logger.warning("pool %s: %d handler(s) still running at exit; their jobs are handed back once this "
                           "process has ended", self.worker_id, unfinished)
            return
        try:
            await release_worker(self.broker, self.worker_id, verdict="release", error=b"")
        except BACKEND_ERRORS as err:
            logger.warning("could not deregister %s: %s", self.worker_id, err)


def _claim_of(fields: dict[bytes, bytes]) -> str:
    """The claim's fencing token (fetch.lua gives every claim one)."""
    return fields.get(b"claim", b"").decode(errors="replace")


def _attempt_of(fields: dict[bytes, bytes]) -> int | None:
    attempt = fields.get(b"attempt", b"")
    return int(attempt) if attempt.isdigit() else None


def _job_extra(ctx: JobContext) -> dict[str, str | int]:
    job = ctx.job
    return {"job_id": job.id, "queue": job.queue, "type": job.type, "attempt": job.attempt, "worker_id": ctx.worker_id}


def _log_outcome(ctx: JobContext, outcome: Outcome) -> None:
    extra = _job_extra(ctx)
    if isinstance(outcome, Completed):
        logger.debug("job %s (%s) completed", ctx.job.id, ctx.job.type, extra=extra)
    elif isinstance(outcome, (Failed, Stuck)):
        error = outcome.error
        trace = "\n" + "\n".join(error.backtrace) if isinstance(error.backtrace, list) else ""
        logger.error("job %s (%s) attempt %d failed: %s: %s%s", ctx.job.id, ctx.job.type, ctx.job.attempt,
                     error.type, error.message, trace, extra=extra)
    else:
        logger.info("job %s (%s) attempt %d: %s", ctx.job.id, ctx.job.type, ctx.job.attempt,
                    type(outcome).__name__, extra=extra)
