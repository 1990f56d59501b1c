"""The Redis key schema. Every key the broker touches is built here and nowhere else.

All keys share one hash-tagged prefix (``{ojs}:`` by default), so a namespace lives in one Redis
Cluster slot and every Lua script stays atomic on a cluster. Scripts that must derive a key from
data they read (a job's queue, for example) receive the prefix as ``KEYS[1]`` and build the key
with the same suffixes documented below.

Schema (``P`` is the prefix):

=============================  ==========  ======================================================
key                            type        content
=============================  ==========  ======================================================
``P job:<id>``                 hash        one job: scalar fields, JSON fragments, error history;
                                           the retry policy only where it differs from the
                                           default (records.py), so a common job's fields all
                                           fit Redis' compact listpack encoding
``P queue:<q>:available``      zset        fetchable jobs; score ``(100 - priority) * 1e13 + seq``
``P queue:<q>:paused``         string      present while the queue is paused
``P queue:<q>:counts``         hash        state -> number of jobs of that queue in that state
``P queue:<q>:config``         hash        queue settings: rl_max, rl_window_ms (rate limit),
                                           max_depth, bp_warn (backpressure bound, warning ratio)
``P queue:<q>:completed``      zset        the queue's completed jobs; score = completion time
                                           (ms); likewise ``:cancelled`` and ``:discarded`` (all
                                           discarded jobs, dead-lettered or not): the admin
                                           listing, purge and retention read these
``P queue:<q>:ratelog``        zset        claims inside the current rate-limit window
``P queue:<q>:dlq``            zset        the queue's dead-lettered jobs (the per-queue index of
                                           ``dlq``, same members and scores)
``P unique:<fingerprint>``     string      id of the job holding a unique-job lock
``P queues``                   hash        queue name -> creation time (ms)
``P delayed``                  zset        ``scheduled`` and ``retryable`` jobs; score = due (ms)
``P active``                   zset        ``active`` jobs; score = earliest of lease and execution
                                           deadline (ms)
``P expiring``                 zset        non-terminal jobs with ``expires_at``; score = expiry
``P dlq``                      zset        dead-lettered jobs; score = time of discard (ms)
``P queue:<q>:suspects``       zset        available jobs that must run alone (they were running
                                           when their process died); score = available score
``P seq``                      string      enqueue sequence (INCR): strict FIFO within a priority
``P claims``                   string      fencing-token counter: every claim takes a new number,
                                           stored as the job's ``claim`` field
``P events``                   stream      lifecycle events, capped
``P worker:<id>``              hash        worker registry entry (state, last heartbeat, its heartbeat
                                           interval, directive); removed when the worker is found dead
``P worker-alone:<id>``        string      the suspect a worker runs alone (it gets nothing else
                                           meanwhile); expires with that claim's lease
``P worker-jobs:<id>``         set         ids of the active jobs a worker holds (for release on death)
``P workers``                  zset        worker id -> last heartbeat (ms)
``P notify:<q>``               channel     pub/sub wake-up: a job became available in queue q
``P workflow:<id>``            hash        a workflow: state, counters, member ids (j<i>), dependents
                                           (d<i>), labels (s<i>), results (r<i>)
``P migrations``               hash        one-time store upgrades done (runtime.broker.migrations)
``P pools``                    hash        pool name -> stored definition (JSON: strategy, queues,
                                           weights), read by that pool's processes at each beat
``P workflows``                zset        workflow id -> creation time (ms): the workflow listing
``P workflow-outbox``          list        outbox: ids of workflow jobs that ended, for advance.lua
                                           (its own namespace: no workflow id can name it)
``P crons``                    hash        cron name -> registration (JSON)
``P cron:next``                zset        cron name -> next fire time (ms); the per-tick claim
``P stats:m:<minute ms>``       hash        statistics history, one minute: <metric>:<queue> -> n
                                           (metrics enqueued, started, completed, failed,
                                           discarded, cancelled, and wait_ms: the sum of the
                                           started jobs' waits); kept 24 h (the rollup expires it)
``P stats:h:<hour ms>``         hash        the same per hour, summed by the rollup; kept 30 days
``P stats:rolled``              string      the last minute the rollup added into its hour
``P maintenance``               hash        present while maintenance mode is on: enabled_at,
                                           reason (fetches return nothing; enqueues go on)
``P rl:<key>``, ``P rl-active:<key>``, ``P rl-starts:<key>``, ``P rl-jobs:<key>``, ``P rate-limits``
                                           per-key rate limits: see runtime/broker/rate_limits.py
``P tenants``, ``P tenant:<t>``, ``P tenant-jobs:<t>``, ``P queue:<q>:tenant-tags``
                                           multi-tenancy: see runtime/broker/tenants.py
``P reaper``                   hash        last_step_ms, resume_at_ms on Redis' clock: lease expiry
                                           waits after an outage (broker/outage.py)
``P webhook:subs``             zset        webhook subscription id -> creation time (ms)
``P webhook:sub:<id>``         hash        one subscription: url, events, filter (JSON), active,
                                           secret (and the previous one while rotating),
                                           consecutive failures, why it was disabled
``P webhook:cursor``           string      id of the last ``events`` entry fanned out to deliveries
``P webhook:fanout-lease``     string      id of the server process doing the fan-out; expires
``P webhook:delivery:<id>``    hash        one delivery of one event to one subscription: body,
                                           attempt, state; expires once delivered or dead
``P webhook:due``              zset        pending deliveries; score = due (ms), or the end of
                                           the lease of a delivery being sent (then redelivered)
``P webhook:log:<sub id>``     list        the subscription's latest delivery attempts (JSON), capped
``P schemas``                  set         job types with a registered args schema (schema registry)
``P schema:<type>``            hash        version key -> registration (JSON: version, schema,
                                           created_at, compatible_with)
``P schemas:gen``              string      the registry's generation: a new random token at every
                                           change; absent while nothing was ever registered.
                                           enqueue.lua compares it with the one the args were
                                           checked against (broker/args_schemas.py)
=============================  ==========  ======================================================
"""

from __future__ import annotations

DEFAULT_PREFIX = "{ojs}:"

# The fixed keys of a namespace (prefix + suffix), by name. The Lua library gets this table too
# (as K), so a script and this module can never disagree on a key's name.
SUFFIXES: dict[str, str] = {
    "queues": "queues",
    "delayed": "delayed",
    "active": "active",
    "expiring": "expiring",
    "dlq": "dlq",
    "seq": "seq",
    "claims": "claims",
    "events": "events",
    "webhook_subs": "webhook:subs",
    "webhook_cursor": "webhook:cursor",
    "webhook_fanout_lease": "webhook:fanout-lease",
    "webhook_due": "webhook:due",
    "workers": "workers",
    "crons": "crons",
    "cron_next": "cron:next",
    "outbox": "workflow-outbox",
    "reaper": "reaper",
    "stats_rolled": "stats:rolled",
    "workflows": "workflows",
    "pools": "pools",
    "migrations": "migrations",
    "maintenance": "maintenance",
    "rate_limits": "rate-limits",
    "schema_types": "schemas",
    "schemas_gen": "schemas:gen",
    "tenants": "tenants",
}


def hash_tag(prefix: str) -> str | None:
    """The hash tag of a prefix (``ojs`` of ``{ojs}:``), which decides a key's Redis Cluster slot;
    None when it has none."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start > -1 else -1
    return prefix[start + 1:end] if start > -1 and end > start + 1 else None


class Keys:
    """Builds the key names of one namespace."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def available(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:available"

    def paused(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:paused"

    def counts(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:counts"

    def config(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:config"

    def ended(self, queue: str, state: str) -> str:
        """The index of a queue's jobs in one terminal state (completed, cancelled, discarded)."""
        return f"{self.prefix}queue:{queue}:{state}"

    def queue_dlq(self, queue: str) -> str:
        """One queue's share of `dlq`: a filtered listing reads only its own entries."""
        return f"{self.prefix}queue:{queue}:dlq"

    def notify(self, queue: str) -> str:
        """Pub/sub channel (not a key): idle workers wait on it instead of polling."""
        return f"{self.prefix}notify:{queue}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def cron_state(self, name: str) -> str:
        return f"{self.prefix}cron:state:{name}"

    def worker_jobs(self, worker_id: str) -> str:
        # Its own namespace: worker ids may contain ':', so `worker:<id>:jobs` could collide
        # with another worker's `worker:<id>` hash.
        return f"{self.prefix}worker-jobs:{worker_id}"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}workflow:{workflow_id}"

    def schema(self, job_type: str) -> str:
        return f"{self.prefix}schema:{job_type}"

    @property
    def schema_types(self) -> str:
        return self.prefix + SUFFIXES["schema_types"]

    @property
    def schemas_gen(self) -> str:
        return self.prefix + SUFFIXES["schemas_gen"]

    def tenant(self, tenant_id: str) -> str:
        return f"{self.prefix}tenant:{tenant_id}"

    def tenant_jobs(self, tenant_id: str) -> str:
        return f"{self.prefix}tenant-jobs:{tenant_id}"

    def tenant_tags(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:tenant-tags"

    @property
    def tenants(self) -> str:
        return self.prefix + SUFFIXES["tenants"]

    def suspects(self, queue: str) -> str:
        return f"{self.prefix}queue:{queue}:suspects"

    @property
    def workflow_outbox(self) -> str:
        return self.prefix + SUFFIXES["outbox"]

    @property
    def queues(self) -> str:
        return self.prefix + SUFFIXES["queues"]

    @property
    def delayed(self) -> str:
        return self.prefix + SUFFIXES["delayed"]

    @property
    def active(self) -> str:
        return self.prefix + SUFFIXES["active"]

    @property
    def expiring(self) -> str:
        return self.prefix + SUFFIXES["expiring"]

    @property
    def dlq(self) -> str:
        return self.prefix + SUFFIXES["dlq"]

    @property
    def seq(self) -> str:
        return self.prefix + SUFFIXES["seq"]

    @property
    def events(self) -> str:
        return self.prefix + SUFFIXES["events"]

    @property
    def workers(self) -> str:
        return self.prefix + SUFFIXES["workers"]

    @property
    def crons(self) -> str:
        return self.prefix + SUFFIXES["crons"]

    @property
    def cron_next(self) -> str:
        return self.prefix + SUFFIXES["cron_next"]

    def stats_minute(self, minute_ms: int) -> str:
        return f"{self.prefix}stats:m:{minute_ms}"

    def stats_hour(self, hour_ms: int) -> str:
        return f"{self.prefix}stats:h:{hour_ms}"

    @property
    def stats_rolled(self) -> str:
        return self.prefix + SUFFIXES["stats_rolled"]

    @property
    def migrations(self) -> str:
        return self.prefix + SUFFIXES["migrations"]

    @property
    def pools(self) -> str:
        return self.prefix + SUFFIXES["pools"]

    @property
    def workflows(self) -> str:
        return self.prefix + SUFFIXES["workflows"]

    @property
    def maintenance(self) -> str:
        return self.prefix + SUFFIXES["maintenance"]

    @property
    def reaper(self) -> str:
        return self.prefix + SUFFIXES["reaper"]

    # --- webhooks (runtime.broker.webhooks) ---------------------------------------------------

    def webhook_sub(self, sub_id: str) -> str:
        return f"{self.prefix}webhook:sub:{sub_id}"

    def webhook_delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}webhook:delivery:{delivery_id}"

    def webhook_log(self, sub_id: str) -> str:
        return f"{self.prefix}webhook:log:{sub_id}"

    @property
    def webhook_subs(self) -> str:
        return self.prefix + SUFFIXES["webhook_subs"]

    @property
    def webhook_cursor(self) -> str:
        return self.prefix + SUFFIXES["webhook_cursor"]

    @property
    def webhook_fanout_lease(self) -> str:
        return self.prefix + SUFFIXES["webhook_fanout_lease"]

    @property
    def webhook_due(self) -> str:
        return self.prefix + SUFFIXES["webhook_due"]
