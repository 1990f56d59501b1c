"""The Python producer API: enqueue, read and cancel jobs through the broker core, as the HTTP
binding does (same validation, same scripts), without an HTTP hop::

    async with Client() as client:           # REDIS_URL, else the running embedded Redis
        job_id = await client.enqueue("email.send", ["a@example.com", "Hi"], queue="email")
        ids = await client.enqueue_many([Draft(type="report.build", args=["2024-06-01"])])
        job = await client.get(job_id)        # the OJS envelope, JSON-native
        handle = await client.enqueue_job("email.send", ["a@example.com", "Hi"])
        await handle.result(timeout=10)       # the handler's result (or JobFailed); see job_handle
        flow = await client.chain([Draft(type="a"), Draft(type="b")])   # also group, batch, workflow

Options are the OJS enqueue option names (``queue``, ``priority``, ``timeout_ms``,
``scheduled_at``, ``delay_ms``, ``expires_at``, ``retry``, ``unique``, ``tags``, ...). When the job
type has a handler registered in this process, its ``queue`` and ``retry`` are the defaults.

Enqueue middleware, ``async def mw(draft, call_next)``, sees each job before it is inserted (OJS
middleware spec §3): it returns ``await call_next()`` (the draft, possibly changed in place), or
``None`` to drop the job silently, or raises to abort the whole call. A draft's ``id`` must not
change. Batches are all or nothing: one rejection rejects them all, nothing is inserted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from runtime import timefmt, tracing
from runtime.broker import clients
from runtime.broker.core import Broker
from runtime.broker.records import NewJob, build_job, decode_request, shares_build, with_identity
from runtime.broker.render import encode_job
from runtime.broker.sharded import ShardedBroker, ShardedWorkflows
from runtime.broker.shards import shard_settings
from runtime.broker.workflows import WorkflowRequest, Workflows
from runtime.config import Settings, settings_from_env
from runtime.embedded_redis import EmbeddedRedisError, default_data_dir, published_url
from runtime.envelope import EnqueueOptions
from runtime.errors import InvalidRequest, NotFound
from runtime.handlers import registered
from runtime.ids import uuid7
from runtime.job_handle import JobHandle, ResultWatch
from runtime.middleware import CallNext, compose

OPTION_NAMES = frozenset(EnqueueOptions.__struct_fields__)
_envelope = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.encode


class Draft(msgspec.Struct, kw_only=True):
    """A job about to be enqueued; enqueue middleware may change everything but ``id``."""

    type: str
    args: list[Any] = []
    meta: dict[str, Any] = {}
    options: dict[str, Any] = {}
    id: str | None = None


class Step(msgspec.Struct, kw_only=True):
    """A workflow step for :meth:`Client.workflow`: a job, its step id and what it waits for."""

    id: str
    job: Draft
    depends_on: Sequence[str] = ()


EnqueueMiddleware = Callable[[Draft, CallNext], Awaitable[Any]]


async def _insert_as_is(draft: Draft) -> Draft:
    return draft


class Client:
    """Producer side of the runtime. Async; one Redis connection pool per client.

    Without `redis_url`: ``OJS_REDIS_URL`` / ``REDIS_URL``, else the embedded Redis of the
    ``ojs-run`` or ``ojs-server`` running on this machine's data directory (``OJS_DATA_DIR``, else
    the default one), which publishes its URL there."""

    def __init__(
        self, redis_url: str | None = None, *, settings: Settings | None = None,
        middleware: Sequence[EnqueueMiddleware] = (),
    ) -> None:
        self.settings = settings or settings_from_env(redis_url=redis_url)
        redis_url = redis_url or _default_redis_url(self.settings)
        # Any URL the runtime takes (redis+sentinel:// too), with the protections of the runtime's
        # own connections: the command deadline (a silent link fails a call, never hangs it),
        # keepalive, health checks and the TLS settings for rediss://.
        # One client per shard (runtime.broker.shards): on a cluster each keeps to its slot's node.
        self._shard_redis = [clients.redis_client(s, redis_url) for s in shard_settings(self.settings)]
        self._redis = self._shard_redis[0]
        self._broker: Broker | ShardedBroker
        self._workflows: Workflows | ShardedWorkflows
        if len(self._shard_redis) == 1:
            self._broker = Broker(self._redis, self.settings)
            self._workflows = Workflows(self._broker)
        else:
            self._broker = ShardedBroker([Broker(r, s) for r, s in zip(
                self._shard_redis, shard_settings(self.settings), strict=True)], self.settings)
            self._workflows = ShardedWorkflows(self._broker)
        self._middleware = bool(middleware)
        self._chain = compose(list(middleware), _insert_as_is)
        self._watches: dict[int, ResultWatch] = {}
        # Jobs of one shape (type, meta, options) made in the same millisecond share one build
        # (see _build): a producer enqueueing one job at a time reuses it too.
        self._builds: dict[tuple[str, bytes, bytes], NewJob] = {}
        self._builds_ms = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for watch in self._watches.values():
            await watch.close()
        await self._broker.close()
        for redis in self._shard_redis:
            await redis.aclose()

    async def enqueue(
        self, type: str, args: Sequence[Any] = (), *, meta: dict[str, Any] | None = None,
        id: str | None = None, **options: Any,
    ) -> str | None:
        """Enqueue one job; returns its id (an existing job's id when a unique policy says so),
        or None when enqueue middleware dropped it."""
        (job_id,) = await self.enqueue_many([Draft(type=type, args=list(args), meta=meta or {}, options=options, id=id)])
        return job_id

    async def enqueue_job(
        self, type: str, args: Sequence[Any] = (), *, meta: dict[str, Any] | None = None,
        id: str | None = None, **options: Any,
    ) -> JobHandle[Any]:
        """`enqueue`, returning a handle to wait on (``await handle.result(timeout=10)``).
        ValueError when enqueue middleware dropped the job: there is nothing to wait for."""
        job_id = await self.enqueue(type, args, meta=meta, id=id, **options)
        if job_id is None:
            raise ValueError(f"enqueue middleware dropped the {type} job")
        return JobHandle(job_id, self)

    def job(self, job_id: str) -> JobHandle[Any]:
        """A handle on a job enqueued earlier (by anyone), to read its status or wait for it."""
        return JobHandle(job_id, self)

    async def watch_of(self, job_id: str) -> ResultWatch:
        """The reader of the event stream of the job's shard, which result handles wait on (one
        per shard, made on first use)."""
        shard = 0
        if isinstance(self._broker, ShardedBroker):
            (found,) = await self._broker.locate([job_id])
            if found is None:
                raise NotFound(f"Job '{job_id}' not found.")
            shard = found
        if shard not in self._watches:
            broker = self._broker.shards[shard] if isinstance(self._broker, ShardedBroker) else self._broker
            self._watches[shard] = ResultWatch(self, broker.redis, broker.keys.events)
        return self._watches[shard]

    async def enqueue_many(self, drafts: Sequence[Draft]) -> list[str | None]:
        """Enqueue all the jobs or none (one script call); None for each job middleware dropped.
        Traced (an exporting runtime, or an SDK the application configured): one PRODUCER span
        for the call, whose context each job carries unless it brought its own."""
        if not tracing.producer_spans_recorded():
            return await self._enqueue_many(drafts, None)
        with tracing.producer_span() as producer:
            return await self._enqueue_many(drafts, producer)

    async def _enqueue_many(self, drafts: Sequence[Draft], producer: tracing.Producer | None) -> list[str | None]:
        now = timefmt.now_ms()
        slots: list[int | None] = []
        if now != self._builds_ms:  # a build holds its instant (created_at, relative times)
            self._builds, self._builds_ms = {}, now
        builds = self._builds
        # Middleware may change a draft and tracing writes into its meta: they get copies, so the
        # caller's drafts stay as they were. Without either nothing writes into a draft.
        copy = self._middleware or producer is not None
        kept_drafts: list[_Encoded] = []
        for original in drafts:
            draft = _with_defaults(original, copy=copy)
            if self._middleware:
                given_id = draft.id
                kept = await self._chain(draft)
                if kept is None:
                    slots.append(None)
                    continue
                if not isinstance(kept, Draft) or kept.id != given_id:
                    raise ValueError("enqueue middleware must return the draft (or None) and keep its id")
                draft = kept
            slots.append(len(kept_drafts))
            if producer is not None:
                producer.inject(draft.meta)
            # Encoded now: a later draft's middleware may write into a container this one shares.
            kept_drafts.append(_Encoded.of(draft, caller_chose=original.id is not None))
        # Validated once every middleware has seen its draft, as the request body of each would be.
        jobs = [_build(encoded, now, builds) for encoded in kept_drafts]
        if producer is not None and jobs:
            producer.jobs([(job.id, job.fields["type"], job.queue) for job in jobs])
        done = await self._broker.enqueue(jobs, now_ms=now) if jobs else []
        return [None if slot is None else done[slot].job_id for slot in slots]

    # --- workflows -------------------------------------------------------------------------

    async def chain(self, steps: Sequence[Draft], *, name: str | None = None) -> dict[str, Any]:
        """Run the steps one after another; each sees the earlier results as `parent_results`.
        Returns the workflow (its `id`, `state`, counters and steps)."""
        return await self._workflow({"type": "chain", "name": name, "steps": await self._members(steps)})

    async def group(self, jobs: Sequence[Draft], *, name: str | None = None) -> dict[str, Any]:
        """Run the jobs in parallel; the workflow completes when all have finished."""
        return await self._workflow({"type": "group", "name": name, "jobs": await self._members(jobs)})

    async def batch(
        self, jobs: Sequence[Draft], *, on_complete: Draft | None = None, on_success: Draft | None = None,
        on_failure: Draft | None = None, name: str | None = None,
    ) -> dict[str, Any]:
        """A group plus callbacks, each enqueued exactly once when every job has finished:
        `on_complete` always, `on_success` if none failed, `on_failure` if any failed."""
        named = {"on_complete": on_complete, "on_success": on_success, "on_failure": on_failure}
        callbacks = {k: (await self._members([v]))[0] for k, v in named.items() if v is not None}
        return await self._workflow(
            {"type": "batch", "name": name, "jobs": await self._members(jobs), "callbacks": callbacks}
        )

    async def workflow(self, steps: Sequence[Step], *, name: str | None = None) -> dict[str, Any]:
        """A graph of steps: each runs once every step it `depends_on` has completed."""
        members = await self._members([step.job for step in steps])
        for member, step in zip(members, steps, strict=True):
            member["id"] = step.id
            member["depends_on"] = list(step.depends_on)
        return await self._workflow({"name": name, "steps": members})

    async def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return await self._workflows.get(workflow_id)

    async def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Cancel the workflow and its jobs that have not finished."""
        return await self._workflows.cancel(workflow_id)

    async def _members(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        """Workflow jobs go through the enqueue middleware like any job; dropping one is an
        error, since a workflow cannot run with a hole in it."""
        members = []
        for draft in drafts:
            draft = _with_defaults(draft)
            given_id = draft.id
            kept = await self._chain(draft)
            if not isinstance(kept, Draft) or kept.id != given_id:
                raise ValueError("enqueue middleware may not drop or re-identify a workflow job")
            members.append(msgspec.json.decode(_body(kept)))
        return members

    async def _workflow(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if v is not None}
        return await self._workflows.create(msgspec.convert(body, WorkflowRequest))

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job envelope (OJS field names, JSON-native values)."""
        return _envelope.decode(encode_job(await self._broker.get(job_id)))

    async def cancel(self, job_id: str) -> str:
        """Cancel a job that has not finished; returns the state it was in. A running job's
        handler learns it at its pool's next heartbeat (``ctx.cancelled``)."""
        return await self._broker.cancel(job_id)


def _default_redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    data_dir = settings.data_dir or default_data_dir()
    url = published_url(data_dir)
    if url is None:
        raise EmbeddedRedisError(
            f"no Redis URL given (OJS_REDIS_URL, REDIS_URL) and no embedded Redis runs on {data_dir}: "
            "start `ojs-run` or `ojs-server` there (`make run`), or pass the URL"
        )
    return url


def _with_defaults(draft: Draft, *, copy: bool = True) -> Draft:
    """The draft with its handler's defaults and an id; a new draft (its own args, meta and
    options) unless `copy` is off and nothing needs adding."""
    if not OPTION_NAMES.issuperset(draft.options):
        unknown = set(draft.options) - OPTION_NAMES
        raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
    options = draft.options
    spec = registered(draft.type)
    if spec is not None and ((spec.queue and "queue" not in options) or (spec.retry and "retry" not in options)):
        options = dict(options)
        if spec.queue and "queue" not in options:
            options["queue"] = spec.queue
        if spec.retry and "retry" not in options:
            options["retry"] = spec.retry
    args = draft.args if type(draft.args) is list else list(draft.args)
    if copy:
        return Draft(type=draft.type, args=list(args), meta=dict(draft.meta),
                     options=options if options is not draft.options else dict(options), id=draft.id or uuid7())
    if draft.id and options is draft.options and args is draft.args:
        return draft
    return Draft(type=draft.type, args=args, meta=draft.meta, options=options, id=draft.id or uuid7())


def _body(draft: Draft) -> bytes:
    body: dict[str, Any] = {"type": draft.type, "args": draft.args, "id": draft.id}
    if draft.meta:
        body["meta"] = draft.meta
    if draft.options:
        body["options"] = draft.options
    return msgspec.json.encode(body)


class _Encoded(msgspec.Struct, frozen=True):
    """A draft as its middleware left it: the JSON of its parts, fixed at that moment."""

    id: str
    type: str
    args: bytes
    meta: bytes
    options: bytes
    caller_chose: bool  # the caller chose the id (it may collide), or it was made here

    @classmethod
    def of(cls, draft: Draft, *, caller_chose: bool) -> _Encoded:
        return cls(id=draft.id or "", type=draft.type, args=_encode(draft.args),
                   meta=_encode(draft.meta) if draft.meta else b"",
                   options=_encode(draft.options) if draft.options else b"", caller_chose=caller_chose)

    def body(self) -> bytes:
        body: dict[str, Any] = {"type": self.type, "args": msgspec.Raw(self.args), "id": self.id}
        if self.meta:
            body["meta"] = msgspec.Raw(self.meta)
        if self.options:
            body["options"] = msgspec.Raw(self.options)
        return _encode(body)


_valid_args = msgspec.json.Decoder(list[msgspec.Raw])


def _build(draft: _Encoded, now_ms: int, builds: dict[tuple[str, bytes, bytes], NewJob]) -> NewJob:
    """The job of a draft (with an id), validated as the HTTP binding validates a request body.
    A fresh id next to a job of the same type, meta and options built at the same instant takes
    that job's build with its own id and args (records.with_identity): the per-job work of a
    batch is then checking and storing the args. `builds` holds the builds of `now_ms` only."""
    if draft.caller_chose:
        return _build_alone(draft, now_ms)
    shape = (draft.type, draft.meta, draft.options)
    template = builds.get(shape)
    if template is not None:
        return with_identity(template, draft.id, _checked_args(draft.args))
    req = decode_request(draft.body())
    job = build_job(req, {}, job_id=draft.id, now_ms=now_ms)
    if shares_build(req):
        builds[shape] = job
    return job


def _checked_args(args: bytes) -> str:
    # The args as the request decoder takes them: JSON (a msgspec.Raw element is copied as it
    # is by the encoder, so it is checked here), UTF-8 text.
    try:
        _valid_args.decode(args)
        return args.decode()
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"Invalid job: args: {err}") from None


def _build_alone(draft: _Encoded, now_ms: int) -> NewJob:
    # The body holds envelope fields only: no unknown top-level fields to keep.
    req = decode_request(draft.body())
    job = build_job(req, {}, job_id=draft.id, now_ms=now_ms)
    # A fresh UUIDv7 cannot collide: enqueue.lua checks only a caller's id for an existing job.
    job.client_id = draft.caller_chose
    return job
