"""Settings: one frozen object built once from defaults, environment and command-line flags."""

from __future__ import annotations

import os

import msgspec

from runtime.broker.keys import DEFAULT_PREFIX, hash_tag


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every tunable of the broker and its HTTP endpoint, with units in the names."""

    redis_url: str | None = None  # None: start an embedded Redis
    data_dir: str | None = None  # embedded Redis data directory (AOF); None: embedded_redis.default_data_dir()
    embedded_appendfsync: str = "everysec"  # the embedded Redis' AOF fsync policy: always | everysec | no
    key_prefix: str = DEFAULT_PREFIX
    # The namespace split into this many shards, each its own key prefix and Cluster slot
    # (runtime/broker/shards.py); 1: one prefix, key_prefix itself.
    shards: int = 1
    # How long a Redis command may go unanswered before its connection is taken for dead and
    # closed (its callers fail with an unknown outcome). Longer than the biggest batched script
    # call takes; see runtime/broker/wire.py. 0: no deadline.
    redis_command_timeout_ms: int = 5_000
    # TLS for a rediss:// URL (runtime/broker/clients.py): PEM files of the CA that signed the
    # server's certificate (default: the system's CAs), and the client certificate and key
    # when the server asks for one. The URL's query (?ssl_ca_certs=...) wins over these.
    redis_tls_ca: str | None = None
    redis_tls_cert: str | None = None
    redis_tls_key: str | None = None
    # "primary": a write is answered once the primary made it (Redis replicates asynchronously);
    # "replicated": enqueue, ack and nack wait until `durability_replicas` replicas confirm it,
    # for up to `durability_timeout_ms` (then an unknown-outcome error); runtime/broker/durability.py.
    durability: str = "primary"
    durability_replicas: int = 1
    durability_timeout_ms: int = 1_000
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    api_read_keys: tuple[str, ...] = ()  # read-only keys (OJS_API_READ_KEYS, comma-separated)
    allow_insecure_no_auth: bool = False
    # Lease length when neither the job nor the fetch names one. Long on purpose: a worker that
    # never heartbeats must not lose its job to a short default (spec: 1800 s).
    default_visibility_ms: int = 1_800_000
    events_maxlen: int = 10_000  # 0 disables the event stream
    max_body_bytes: int = 1_048_576
    max_batch_size: int = 1_000
    max_fetch_count: int = 1_000
    max_page_size: int = 200
    metrics_max_queues: int = 100  # queues whose depth and oldest-job age /metrics reads from Redis
    # Distinct values a client-chosen metric label (queue, type) takes per process; later ones
    # are counted under "other", so names sent by clients cannot grow /metrics without bound.
    metrics_label_cap: int = 200
    scheduler_interval_ms: int = 100  # promoter / reaper cadence
    cron_interval_ms: int = 500
    scheduler_step_limit: int = 1_000  # due entries handled per script call
    # Lease expiry after an outage (runtime/broker/outage.py): a pause longer than the gap between
    # two scheduler steps of any server, on Redis' clock, means no pool could renew its leases
    # either; expiry then waits the grace, two default pool heartbeat intervals, for them to renew.
    reaper_outage_gap_ms: int = 2_000
    reaper_outage_grace_ms: int = 10_000
    # A job whose worker process died this many times is dead-lettered instead of retried again:
    # it is probably what kills the worker.
    worker_lost_cap: int = 3
    # A chain step's parent_results carry the earlier steps' results newest first while they fit
    # in this many bytes; older ones become null (indexes keep their meaning). Without a bound a
    # long chain copies its results quadratically.
    parent_results_max_bytes: int = 65_536
    # Dead-worker detection (worker protocol, section 10): a worker that registered by heartbeat
    # is dead after this many intervals without one, the interval being the longer of its own
    # (reported in its heartbeats; ojs-run pools report theirs) and this one. Its jobs are
    # requeued as a worker loss and its record removed. 0 turns detection off.
    worker_heartbeat_interval_ms: int = 5_000
    worker_missed_heartbeats: int = 6
    # The admin API shows a worker silent for this many intervals as stale, and lets an operator
    # deregister it from then on (before the automatic removal above).
    worker_stale_heartbeats: int = 3
    # The pool an ojs-run supervisor's processes belong to (the fair-scheduling extension's pools:
    # an operator's stored definition for this name sets their queue weights and strategy).
    pool_name: str = "default"
    # The statistics history (admin API): minutes kept this long, hours this long.
    stats_minute_retention_ms: int = 86_400_000
    stats_hour_retention_ms: int = 30 * 86_400_000
    stats_rollup_interval_ms: int = 5_000
    # HTTP endpoint under load (runtime/api/http_protocol.py). A client has this long to send a
    # request's head (line and headers) from the moment it connects or starts the request, and
    # this long for its body; then it gets a 408 and its connection is closed.
    http_header_timeout_ms: int = 5_000
    http_body_timeout_ms: int = 10_000
    # Open connections and requests in progress, each bounded by this; beyond it a request gets a
    # retryable 503 (the probes /health and /ready are always answered). 0: no bound.
    http_max_concurrency: int = 1_000
    # The endpoint's redis-py pool: a request waits up to the timeout for a free connection
    # (then a retryable 503) instead of failing at once when all are busy.
    redis_max_connections: int = 100
    redis_pool_timeout_ms: int = 5_000
    # ojs-server --workers (runtime/server_workers.py): a process whose event loop has not beaten
    # for this long is hung and is killed and restarted; so is one not serving this long after
    # its start.
    server_process_stale_ms: int = 5_000
    server_process_start_timeout_ms: int = 60_000
    # Webhooks (runtime/webhooks): every server process delivers. A delivery being sent is leased
    # for webhook_lease_ms, then redelivered (its sender died); so the lease outlasts the timeout.
    webhooks_allow_http: bool = False  # plain-HTTP subscriber URLs: development and tests only
    webhook_timeout_ms: int = 30_000  # one delivery attempt, connect to last byte read
    webhook_lease_ms: int = 60_000
    webhook_backoff_base_ms: int = 30_000  # the spec's schedule (30 s, 2 min, 10 min, ...) is in these units
    webhook_max_attempts: int = 8
    webhook_disable_after_failures: int = 20  # consecutive failed attempts; 0: never disable
    webhook_concurrency: int = 8  # deliveries in flight per process
    webhook_interval_ms: int = 200
    webhook_max_subscriptions: int = 100
    webhook_log_length: int = 100  # attempts kept per subscription
    webhook_max_pending: int = 100_000  # deliveries waiting; past it new events are not delivered
    webhook_retention_ms: int = 86_400_000  # a finished delivery's record

    def __post_init__(self) -> None:
        from runtime.broker.cluster import is_cluster_url  # here: they load the redis client
        from runtime.broker.tls import is_tls_url

        if (self.redis_tls_ca or self.redis_tls_cert or self.redis_tls_key) and not is_tls_url(self.redis_url):
            raise ValueError("OJS_REDIS_TLS_CA, _CERT and _KEY need a rediss:// Redis URL "
                             "(or rediss+cluster://, rediss+sentinel://)")

        if is_cluster_url(self.redis_url) and hash_tag(self.key_prefix) is None:
            # A namespace is one slot: every key of a transition must hash alike.
            raise ValueError(f"on a Redis Cluster OJS_KEY_PREFIX must carry a hash tag, such as '{{ojs}}:'; "
                             f"{self.key_prefix!r} has none")
        from runtime.broker.shards import MAX_SHARDS

        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"OJS_SHARDS must be between 1 and {MAX_SHARDS}")
        if self.durability not in ("primary", "replicated"):
            raise ValueError("OJS_DURABILITY must be primary or replicated")
        if self.durability_replicas < 1 or self.durability_timeout_ms < 1:
            raise ValueError("OJS_DURABILITY_REPLICAS and OJS_DURABILITY_TIMEOUT_MS must be positive")
        if (self.durability == "replicated" and self.redis_command_timeout_ms
                and self.durability_timeout_ms >= self.redis_command_timeout_ms):
            # A WAIT that runs into the connection's deadline would close the connection.
            raise ValueError("OJS_DURABILITY_TIMEOUT_MS must be below OJS_REDIS_COMMAND_TIMEOUT_MS")
        if self.embedded_appendfsync not in ("always", "everysec", "no"):
            raise ValueError("OJS_APPENDFSYNC must be always, everysec or no")
        if self.reaper_outage_gap_ms < 5 * self.scheduler_interval_ms:
            # Otherwise a lone server's ordinary pause between two steps would look like an
            # outage at every step, and no lease would ever expire.
            raise ValueError("reaper_outage_gap_ms must be at least 5 scheduler intervals")
        if self.stats_minute_retention_ms < 3_600_000 or self.stats_hour_retention_ms < self.stats_minute_retention_ms:
            raise ValueError("stats minute retention must be at least 1 h, and hour retention at least that")
        if min(self.http_header_timeout_ms, self.http_body_timeout_ms, self.redis_max_connections,
               self.redis_pool_timeout_ms) <= 0 or self.http_max_concurrency < 0:
            raise ValueError("HTTP timeouts and the Redis pool size must be positive; "
                             "http_max_concurrency 0 or more")
        if self.server_process_stale_ms < 1_000 or self.server_process_start_timeout_ms <= 0:
            # Below a second the parent would take a busy loop's late beat for a hang.
            raise ValueError("server_process_stale_ms must be at least 1000; "
                             "server_process_start_timeout_ms positive")
        if not 0 < self.webhook_timeout_ms < self.webhook_lease_ms:
            raise ValueError("webhook_timeout_ms must be positive and below webhook_lease_ms")
        if min(self.webhook_max_attempts, self.webhook_concurrency, self.webhook_interval_ms,
               self.webhook_max_subscriptions, self.webhook_log_length, self.webhook_backoff_base_ms,
               self.webhook_max_pending, self.webhook_retention_ms) <= 0 or self.webhook_disable_after_failures < 0:
            raise ValueError("webhook attempts, concurrency, interval, limits, backoff and retention must be "
                             "positive; webhook_disable_after_failures 0 or more")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def settings_from_env(**overrides: object) -> Settings:
    """Defaults < environment (OJS_*, REDIS_URL) < explicit overrides (command-line flags)."""
    values: dict[str, object] = {}
    if os.environ.get("REDIS_URL"):
        values["redis_url"] = os.environ["REDIS_URL"]
    if os.environ.get("OJS_REDIS_URL"):
        values["redis_url"] = os.environ["OJS_REDIS_URL"]
    for field, env in (("redis_tls_ca", "OJS_REDIS_TLS_CA"), ("redis_tls_cert", "OJS_REDIS_TLS_CERT"),
                       ("redis_tls_key", "OJS_REDIS_TLS_KEY")):
        if os.environ.get(env):
            values[field] = os.environ[env]
    if os.environ.get("OJS_HOST"):
        values["host"] = os.environ["OJS_HOST"]
    if (port := _env_int("OJS_PORT")) is not None:
        values["port"] = port
    if os.environ.get("OJS_API_KEY"):
        values["api_key"] = os.environ["OJS_API_KEY"]
    if os.environ.get("OJS_API_READ_KEYS"):
        values["api_read_keys"] = tuple(k.strip() for k in os.environ["OJS_API_READ_KEYS"].split(",") if k.strip())
    if os.environ.get("OJS_POOL_NAME"):
        values["pool_name"] = os.environ["OJS_POOL_NAME"].strip()
    if os.environ.get("OJS_DATA_DIR"):
        values["data_dir"] = os.environ["OJS_DATA_DIR"]
    if os.environ.get("OJS_APPENDFSYNC"):
        values["embedded_appendfsync"] = os.environ["OJS_APPENDFSYNC"].strip().lower()
    if os.environ.get("OJS_DURABILITY"):
        values["durability"] = os.environ["OJS_DURABILITY"].strip().lower()
    if os.environ.get("OJS_KEY_PREFIX"):
        values["key_prefix"] = os.environ["OJS_KEY_PREFIX"]
    values["allow_insecure_no_auth"] = _env_bool("OJS_ALLOW_INSECURE_NO_AUTH")
    values["webhooks_allow_http"] = _env_bool("OJS_WEBHOOKS_ALLOW_HTTP")
    for field, env in (
        ("max_body_bytes", "OJS_MAX_BODY_BYTES"),
        ("shards", "OJS_SHARDS"),
        ("redis_command_timeout_ms", "OJS_REDIS_COMMAND_TIMEOUT_MS"),
        ("durability_replicas", "OJS_DURABILITY_REPLICAS"),
        ("durability_timeout_ms", "OJS_DURABILITY_TIMEOUT_MS"),
        ("max_batch_size", "OJS_MAX_BATCH_SIZE"),
        ("default_visibility_ms", "OJS_DEFAULT_VISIBILITY_MS"),
        ("events_maxlen", "OJS_EVENTS_MAXLEN"),
        ("metrics_max_queues", "OJS_METRICS_MAX_QUEUES"),
        ("metrics_label_cap", "OJS_METRICS_LABEL_CAP"),
        ("worker_heartbeat_interval_ms", "OJS_WORKER_HEARTBEAT_INTERVAL_MS"),
        ("worker_missed_heartbeats", "OJS_WORKER_MISSED_HEARTBEATS"),
        ("stats_minute_retention_ms", "OJS_STATS_MINUTE_RETENTION_MS"),
        ("stats_hour_retention_ms", "OJS_STATS_HOUR_RETENTION_MS"),
        ("reaper_outage_gap_ms", "OJS_REAPER_OUTAGE_GAP_MS"),
        ("reaper_outage_grace_ms", "OJS_REAPER_OUTAGE_GRACE_MS"),
        ("http_header_timeout_ms", "OJS_HTTP_HEADER_TIMEOUT_MS"),
        ("http_body_timeout_ms", "OJS_HTTP_BODY_TIMEOUT_MS"),
        ("http_max_concurrency", "OJS_HTTP_MAX_CONCURRENCY"),
        ("redis_max_connections", "OJS_REDIS_MAX_CONNECTIONS"),
        ("redis_pool_timeout_ms", "OJS_REDIS_POOL_TIMEOUT_MS"),
        ("server_process_stale_ms", "OJS_SERVER_PROCESS_STALE_MS"),
        ("server_process_start_timeout_ms", "OJS_SERVER_PROCESS_START_TIMEOUT_MS"),
        *((f"webhook_{name}", f"OJS_WEBHOOK_{name.upper()}") for name in (
            "timeout_ms", "lease_ms", "backoff_base_ms", "max_attempts", "disable_after_failures",
            "concurrency", "interval_ms", "max_subscriptions", "log_length", "max_pending", "retention_ms")),
    ):
        if (number := _env_int(env)) is not None:
            values[field] = number
    values.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(values, Settings)
