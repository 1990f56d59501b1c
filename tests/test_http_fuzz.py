"""Robustness of the HTTP endpoint: no request makes the server answer 500 or crash.

Property-based tests (hypothesis) against a REAL `python -m runtime` process on its own Redis
database, with small body and batch limits so the bounds are cheap to exercise. Every answer must
be below 500; a 4xx must be an OJS error object (`error.code`, `error.message` strings) with
`Content-Type: application/openjobspec+json` exactly; a 2xx must be a JSON object. After each
test the server must still answer `GET /ojs/v1/health` with 200 and its process must be alive.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RedisServer
from tests.fixtures.broker_process import BrokerProcess

JSON_TYPE = "application/openjobspec+json"
MAX_BODY = 32_768  # big enough for 5000-deep nesting (`[` * 5000 is 10 kB, `{"a":` * 5000 is 25 kB)
MAX_BATCH = 5
API_KEY = "fuzz-secret-key"
HTTP_TIMEOUT_S = 15.0

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


def fuzz(max_examples: int) -> settings:
    """The shared settings with this test's example count (hypothesis allows one @settings)."""
    return settings(FUZZ, max_examples=max_examples)


# --- the server under test -------------------------------------------------------------------


@dataclass
class Sent:
    """What was sent, for assertion messages."""

    method: str
    path: str
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None

    def __str__(self) -> str:
        body = "" if self.body is None else f" body({len(self.body)} B)={self.body[:400]!r}"
        hdrs = f" headers={self.headers!r}" if self.headers else ""
        return f"{self.method} {self.path[:400]}{hdrs}{body}"


class FuzzServer(BrokerProcess):
    """A server with small limits, so the bounds are exercised cheaply, and one keep-alive client."""

    def __init__(self, redis_url: str, log_dir: Path, *, api_key: str | None = None) -> None:
        env = {"OJS_MAX_BODY_BYTES": str(MAX_BODY), "OJS_MAX_BATCH_SIZE": str(MAX_BATCH),
               "OJS_EVENTS_MAXLEN": "300"}
        if api_key:
            env["OJS_API_KEY"] = api_key
        super().__init__(redis_url, log_dir, env=env)
        self.api_key = api_key
        self.client = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def log_size(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def assert_alive(self, after: str) -> None:
        log = "\n--- server log ---\n"
        assert self.proc.poll() is None, (
            f"server died (exit {self.proc.returncode}) after {after}{log}{self.log_tail()}"
        )
        try:
            resp = self.client.get("/ojs/v1/health")
        except httpx.TransportError as err:
            pytest.fail(f"server stopped answering after {after}: {err!r}{log}{self.log_tail()}")
        assert resp.status_code == 200, (
            f"health is {resp.status_code} after {after}: {resp.text[:300]}{log}{self.log_tail()}"
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, Any] | None = None,
        auth: bool = True,
    ) -> tuple[httpx.Response, Sent]:
        hdrs: dict[str, Any] = dict(self.auth) if auth else {}
        if body is not None:
            hdrs.setdefault("Content-Type", JSON_TYPE)
        hdrs.update(headers or {})
        sent = Sent(method, path, headers or {}, body)
        try:
            resp = self.client.request(method, path, content=body, headers=hdrs)
        except httpx.TransportError as err:
            pytest.fail(
                f"no HTTP response to {sent}: {err!r}\n--- server log ---\n{self.log_tail()}"
            )
        return resp, sent

    def stop(self) -> None:
        self.client.close()
        super().stop()


# Methods the HTTP parser (llhttp, via uvicorn's httptools) knows; any other method is refused by
# uvicorn itself with a plain-text 400 before the app runs. The spec digest (§0.2) accepts that.
PARSER_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


def problem(resp: httpx.Response, sent: Sent) -> tuple[str, Any]:
    """("", parsed body) when the answer has the property every answer must have, else (why, None).

    The property: status < 500; a 4xx is an OJS error object with the exact Content-Type; a 2xx is
    a JSON object with the exact Content-Type. HEAD answers carry no body and are checked for
    status only."""
    status = resp.status_code
    where = f"{sent}\n  -> {status} {resp.headers.get('content-type')!r} {resp.content[:400]!r}"
    if status >= 500:
        return f"5xx answer to {where}", None
    if sent.method == "HEAD":
        return "", None
    if (
        sent.method not in PARSER_METHODS
        and status == 400
        and resp.content == b"Invalid HTTP request received."
    ):
        return "", None
    if not 200 <= status < 500 or 300 <= status < 400:
        return f"unexpected status: {where}", None
    if resp.headers.get("content-type") != JSON_TYPE:
        return f"wrong Content-Type: {where}", None
    try:
        body = json.loads(resp.content)
    except ValueError:
        return f"body is not JSON: {where}", None
    if not isinstance(body, dict):
        return f"body is not a JSON object: {where}", None
    if status >= 400:
        err = body.get("error")
        if not isinstance(err, dict):
            return f"4xx without an error object: {where}", None
        if not (isinstance(err.get("code"), str) and err["code"]):
            return f"error.code not a non-empty string: {where}", None
        if not (isinstance(err.get("message"), str) and err["message"]):
            return f"error.message not a non-empty string: {where}", None
        if not isinstance(err.get("retryable"), bool):
            return f"error.retryable not a bool: {where}", None
    return "", body


def check(server: FuzzServer, resp: httpx.Response, sent: Sent) -> Any:
    """Fail unless the answer has the property; returns the parsed body (None for HEAD)."""
    why, body = problem(resp, sent)
    if why:
        pytest.fail(f"{why}\n--- server log ---\n{server.log_tail()}")
    return body


class Sweep:
    """Collects every failing request of a deterministic sweep, so one run reports all of them."""

    def __init__(self, server: FuzzServer) -> None:
        self.server = server
        self.failures: dict[str, str] = {}  # first failure per "kind" key
        self.count = 0

    def run(
        self,
        key: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, Any]:
        resp, sent = self.server.send(method, path, body=body, headers=headers)
        self.count += 1
        why, parsed = problem(resp, sent)
        if why and key not in self.failures:
            self.failures[key] = why if resp.status_code < 500 else f"{resp.status_code} for {sent}"
        return resp, parsed

    def verify(self) -> None:
        if self.failures:
            listing = "\n".join(f"[{key}] {why}" for key, why in self.failures.items())
            pytest.fail(
                f"{len(self.failures)} failing request kinds (of {self.count} requests):\n{listing}"
                f"\n--- server log ---\n{self.server.log_tail(60)}"
            )


@pytest.fixture(scope="module")
def fuzz_redis_url(redis_server: RedisServer, _test_db_numbers: Iterator[int]) -> str:
    """A module-wide DB from the round-robin of test DBs (8 and up), flushed once."""
    url = redis_server.url_for_db(next(_test_db_numbers))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture(scope="module")
def log_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Server logs; kept when a test failed (the failure messages quote their tails)."""
    path = Path(tempfile.mkdtemp(prefix="ojs-fuzz-"))
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server(fuzz_redis_url: str, log_dir: Path) -> Iterator[FuzzServer]:
    srv = FuzzServer(fuzz_redis_url, log_dir)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def auth_server(
    redis_server: RedisServer, _test_db_numbers: Iterator[int], log_dir: Path
) -> Iterator[FuzzServer]:
    """A second server with an API key, to fuzz the Authorization header."""
    url = redis_server.url_for_db(next(_test_db_numbers))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    srv = FuzzServer(url, log_dir, api_key=API_KEY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test (one example class), every server it used is alive and healthy, and its
    background loops (promoter, reaper, cron) did not fail on what the test stored."""
    servers = [
        request.getfixturevalue(name)
        for name in ("server", "auth_server")
        if name in request.fixturenames
    ]
    offsets = [srv.log_size() for srv in servers]
    yield
    for srv, offset in zip(servers, offsets, strict=True):
        srv.assert_alive(request.node.name)
        logged = srv.log_since(offset)
        assert "loop: step failed" not in logged, (
            f"a background loop failed during {request.node.name}:\n{logged[-4000:]}"
        )


# --- JSON with raw tokens ------------------------------------------------------------------


class RawJSON(str):
    """A JSON text inserted verbatim (numbers Python cannot emit, escapes, deep nesting)."""


def dumps(value: Any) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def encode(value: Any) -> bytes:
    return dumps(value).encode("utf-8", "surrogatepass")


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def nested(depth: int, kind: str) -> RawJSON:
    if kind == "list":
        return RawJSON("[" * depth + "1" + "]" * depth)
    if kind == "dict":
        return RawJSON('{"a":' * depth + "1" + "}" * depth)
    pairs = depth // 2
    return RawJSON('[{"a":' * pairs + "[]" + "}]" * pairs)


# --- strategies ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

# fmt: off
RAW_TOKENS = [
    "1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 400, "1.5e-400",
    "123456789012345678901234567890.5",
    "9223372036854775807", "9223372036854775808", "18446744073709551616", "-9223372036854775809",
    "0.0000000000000000000001", "-0", "1E+2", '"\\ud800"', '"a\\udfff"', '"\\u0000"',
    '"\\u0000abc"',
    '"\\ud83d\\ude00"', '"\\n\\r\\t"', '"\\/"', "[]", "{}", '""', '" "', "true", "null",
]
# fmt: on
boundary_ints = st.sampled_from(
    [
        0,
        -1,
        1,
        99,
        100,
        101,
        -100,
        -101,
        2**31 - 1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        -(10**30),
        1000,
        1_000_000,
        315_360_000_000,
        315_360_000_001,
    ]
)
# fmt: off
TIMESTAMPS_FIXED = [
    "2099-12-31T23:59:59Z", "9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59", "0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-02-12T24:00:00Z", "2026-02-12T23:60:00Z", "2026-02-12T23:59:60Z", "2026-02-12T10:30:00",
    "2026-02-12T10:30:00+24:00", "2026-02-12T10:30:00+99:99",
    "2026-02-12T10:30:00.1234567890123456789Z",
    "2026-02-12T10:30:00." + "9" * 5000 + "Z", "1970-01-01T00:00:00Z", "2026-02-12 10:30:00z",
    "+PT1S", "+PT0S", "+P99999999999Y", "+P1" + "0" * 300 + "D", "+1h", "+-1s", "+", "+PT", "+P",
    "+PT1.5S", "+P1,5D", "+500ms", "+10000Y", "+P9999Y", "now", "", " ", "\u0000",
    "٢٠٢٦-٠٢-١٢T10:30:00Z",
    "2026-02-12T10:30:00Z\n", "\ud800",
]
DURATIONS_FIXED = [
    "PT1S", "PT0S", "P0D", "PT0.0001S", "P99999999999Y", "PT", "P", "1s", "0ms", "-1s", "",
    "PT1" + "0" * 400 + "S", "P1Y2M3W4DT5H6M7.5S", "PT1.5H30M", "1h30m", "1.5.5s", "∞",
]
CRON_FIXED = [
    "* * * * *", "0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "*/0 * * * *",
    "0-1000000 * * * *",
    "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "5-1 * * * *", "@yearly",
    "@reboot", "@every 1s", "@every 0s", "@every 999ms", "@every PT1S", "@every", "@every -1s",
    "@every 10000Y", "@every 99999999999999999999Y", "0 0 L * *", "0 0 LW * *", "0 0 15W * *",
    "0 0 * * 5#6", "0 0 * * 5L", "0 0 * * L5", "0 0 * * 7", "? ? ? ? ?", "* * * * * *",
    "* * * * * * *",
    "", " ", "*", "0 0 29 2 1", "0 0 1 jan mon", "0 0 1 JAN-DEC/0 *", "R * * * *", "H * * * *",
    "0 0 1-31/9999999999999999999 * *", "1,2,3," * 50 + "4 * * * *", "0 0 29 2 * 2100",
]
TIMEZONES_FIXED = [
    "UTC", "Europe/Berlin", "America/New_York", "Not/AZone", "../../etc/passwd", "/etc/localtime",
    "", " ", "utc", "Etc/GMT+14", "Etc/GMT-15", "posixrules", "Factory", "\u0000", "UTC\n",
    "Europe/" + "x" * 300, "Asia/Kathmandu", "Australia/Lord_Howe", "A" * 63,
]
# fmt: on
timestamps = st.one_of(
    st.sampled_from(TIMESTAMPS_FIXED),
    st.from_regex(
        r"\A[+-]?[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}"
        r"(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
    st.from_regex(r"\A\+P([0-9]{1,15}[YMWD])*(T([0-9]{1,15}([.,][0-9]{1,5})?[HMS])*)?\Z"),
    st.from_regex(r"\A\+[0-9]{1,20}(ms|s|m|h|d)([0-9]{1,20}(ms|s|m|h|d))?\Z"),
    st.text(max_size=40),
)
durations = st.one_of(
    st.sampled_from(DURATIONS_FIXED),
    st.from_regex(r"\AP([0-9]{1,20}[YMWD])*(T([0-9]{1,20}([.,][0-9]{1,6})?[HMS])*)?\Z"),
    st.from_regex(r"\A[0-9]{1,20}(ms|s|m|h|d)+\Z"),
    st.text(max_size=20),
)
cron_expressions = st.one_of(
    st.sampled_from(CRON_FIXED),
    st.lists(
        st.text(alphabet="0123456789*/,-?LW#@ RHjanmo", min_size=1, max_size=8),
        min_size=1,
        max_size=7,
    ).map(" ".join),
    st.text(max_size=40),
)
timezones = st.one_of(
    st.sampled_from(TIMEZONES_FIXED),
    st.text(max_size=30),
)
long_strings = st.integers(min_value=256, max_value=5000).map(lambda n: "x" * n)
unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)

nasty_values = st.one_of(
    st.none(),
    st.booleans(),
    boundary_ints,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.5, 1.0000001, 0.999999, 1e-7, 1e21]),
    st.sampled_from(RAW_TOKENS).map(RawJSON),
    st.text(max_size=30),
    unicode_text,
    long_strings,
    timestamps,
    durations,
    st.lists(json_scalars, max_size=4),
    st.dictionaries(st.text(max_size=8), json_scalars, max_size=4),
    st.lists(st.text(max_size=5), min_size=101, max_size=150),
    st.builds(nested, st.integers(10, 300), st.sampled_from(["list", "dict", "mixed"])),
)


INT_FIELDS = frozenset(
    {
        "priority",
        "timeout_ms",
        "delay_ms",
        "visibility_timeout_ms",
        "max_attempts",
        "initial_interval_ms",
        "max_interval_ms",
        "attempt",
        "count",
        "pid",
        "concurrency",
        "active_jobs",
        "period",
    }
)
FLOAT_FIELDS = frozenset({"timeout", "backoff_coefficient"})
big_numbers = st.one_of(
    boundary_ints,
    st.sampled_from(RAW_TOKENS[:12]).map(RawJSON),
    st.sampled_from(
        [1e308, -1e308, 5e-324, -0.0, 0.5, 1.0000001, 0.999999, 1e-7, 1e21, 9.2e15, 1e300]
    ),
)


def nasty_for(path: str) -> st.SearchStrategy[Any]:
    """Wrong values for one field, biased by what that field holds."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("scheduled_at", "delay_until", "expires_at", "started_at"):
        return timestamps | nasty_values
    if leaf in ("initial_interval", "max_interval", "visibility_timeout", "period"):
        return durations | big_numbers | nasty_values
    if leaf in ("expression", "cron", "schedule"):
        return cron_expressions | nasty_values
    if leaf == "timezone":
        return timezones | nasty_values
    if leaf in INT_FIELDS or leaf in FLOAT_FIELDS:
        return big_numbers | nasty_values
    return nasty_values


def mutated(skeleton: dict[str, Any], paths: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid skeleton with 1..3 of `paths` replaced by wrong values (or removed)."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = json.loads(json.dumps(skeleton))
        chosen = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        for path in chosen:
            if draw(st.integers(0, 9)) == 0:
                parent_path, _, leaf = path.rpartition(".")
                parent = doc
                for part in parent_path.split(".") if parent_path else []:
                    parent = parent.get(part) if isinstance(parent, dict) else None
                if isinstance(parent, dict):
                    parent.pop(leaf, None)
            else:
                set_path(doc, path, draw(nasty_for(path)))
        return doc

    return build()


ENQUEUE_SKELETON: dict[str, Any] = {
    "type": "fuzz.job",
    "args": [1, "a"],
    "options": {"queue": "fuzz"},
}
# fmt: off
ENQUEUE_PATHS = [
    "type", "args", "id", "queue", "priority", "meta", "meta.request_id", "meta.ojs_validate",
    "meta.test_directive", "schema", "specversion", "scheduled_at", "expires_at", "retry", "unique",
    "tags",
    "timeout", "visibility_timeout", "state", "attempt", "created_at", "result", "errors",
    "unknown_top",
    "options", "options.queue", "options.priority", "options.timeout_ms", "options.timeout",
    "options.scheduled_at",
    "options.delay_until", "options.delay_ms", "options.expires_at", "options.retry",
    "options.retry_policy",
    "options.retry.max_attempts", "options.retry.initial_interval",
    "options.retry.initial_interval_ms",
    "options.retry.backoff_coefficient", "options.retry.max_interval",
    "options.retry.max_interval_ms",
    "options.retry.jitter", "options.retry.non_retryable_errors", "options.retry.on_exhaustion",
    "options.retry.backoff_strategy", "options.retry.backoff_type",
    "options.retry_policy.max_attempts",
    "options.unique", "options.unique.key", "options.unique.keys", "options.unique.period",
    "options.unique.on_conflict", "options.unique.states", "options.tags",
    "options.visibility_timeout_ms",
    "options.visibility_timeout", "options.metadata", "options.metadata.test_directive",
    "options.rate_limit",
    "options.pending",
]
# fmt: on

OTHER_BODIES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/ojs/v1/workers/fetch": (
        {"queues": ["fuzz-empty"], "count": 1},
        ["queues", "count", "worker_id", "visibility_timeout_ms", "unknown"],
    ),
    "/ojs/v1/workers/ack": (
        {"job_id": str(uuid.UUID(int=0)), "result": {"ok": True}},
        ["job_id", "result", "worker_id", "attempt"],
    ),
    "/ojs/v1/workers/nack": (
        {"job_id": str(uuid.UUID(int=0)), "error": {"message": "boom"}},
        [
            "job_id",
            "error",
            "error.message",
            "error.code",
            "error.type",
            "error.retryable",
            "error.details",
            "error.backtrace",
            "error.response_code",
            "requeue",
            "worker_id",
            "attempt",
        ],
    ),
    "/ojs/v1/workers/progress": (
        {"job_id": str(uuid.UUID(int=0)), "percentage": 5},
        ["job_id", "percentage", "progress", "percent", "message", "data", "checkpoint"],
    ),
    "/ojs/v1/workers/heartbeat": (
        {"worker_id": "fuzz-worker", "active_jobs": []},
        [
            "worker_id",
            "active_jobs",
            "active_job_ids",
            "job_id",
            "state",
            "shutdown",
            "visibility_timeout_ms",
            "hostname",
            "pid",
            "queues",
            "concurrency",
            "labels",
            "started_at",
        ],
    ),
    "/ojs/v1/workers/beat": (
        {"worker_id": "fuzz-beat", "state": "running", "active_jobs": 0},
        ["worker_id", "state", "active_jobs", "shutdown", "pid"],
    ),
    "/ojs/v1/cron": (
        {
            "name": "fuzz-cron",
            "expression": "0 0 1 1 *",
            "job_template": {"type": "fuzz.cron", "args": []},
        },
        [
            "name",
            "expression",
            "cron",
            "schedule",
            "timezone",
            "overlap_policy",
            "enabled",
            "description",
            "job_template",
            "job_template.type",
            "job_template.args",
            "job_template.meta",
            "job_template.options",
            "job_template.options.queue",
            "job_template.options.priority",
            "job_template.options.retry",
            "job_template.options.retry.max_attempts",
            "job_template.options.scheduled_at",
            "job_template.options.expires_at",
            "type",
            "args",
            "meta",
            "options",
            "queue",
            "priority",
            "unknown_top",
        ],
    ),
    "/ojs/v1/cron/fuzz-cron": ({"enabled": False}, ["enabled", "expression"]),
    "/ojs/v1/jobs/batch": ({"jobs": [{"type": "fuzz.batch", "args": []}]}, ["jobs", "jobs_extra"]),
    "/ojs/v1/queues/fuzz-pq/pause": ({}, ["reason"]),
    "/ojs/v1/queues/fuzz-pq/resume": ({}, ["reason"]),
    "/ojs/v1/dead-letter/" + str(uuid.UUID(int=0)) + "/retry": ({}, ["reason"]),
    "/ojs/v1/schemas": (
        {"job_type": "fuzz.schema", "version": "1.0", "schema": {"type": "array", "items": {"type": "string"}}},
        ["job_type", "type", "version", "schema", "schema.type", "schema.items", "compatible_with"],
    ),
}
BODY_ENDPOINTS: list[tuple[str, str]] = [
    ("POST", "/ojs/v1/jobs"),
    *[("PATCH" if path.startswith("/ojs/v1/cron/") else "POST", path) for path in OTHER_BODIES],
]

# fmt: off
# Every route, `{}` where a path segment goes; the last ones are spec routes that may not exist yet.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/ojs/manifest"), ("GET", "/ojs/v1/health"), ("GET", "/health"), ("GET", "/ready"),
    ("POST", "/ojs/v1/jobs"), ("POST", "/ojs/v1/jobs/batch"), ("GET", "/ojs/v1/jobs/{}"),
    ("DELETE", "/ojs/v1/jobs/{}"), ("POST", "/ojs/v1/workers/fetch"),
    ("POST", "/ojs/v1/workers/ack"),
    ("POST", "/ojs/v1/workers/nack"), ("POST", "/ojs/v1/workers/heartbeat"),
    ("POST", "/ojs/v1/workers/beat"),
    ("GET", "/ojs/v1/workers/{}/health"), ("GET", "/ojs/v1/queues"),
    ("GET", "/ojs/v1/queues/{}/stats"),
    ("POST", "/ojs/v1/queues/{}/pause"), ("POST", "/ojs/v1/queues/{}/resume"),
    ("GET", "/ojs/v1/dead-letter"),
    ("POST", "/ojs/v1/dead-letter/{}/retry"), ("DELETE", "/ojs/v1/dead-letter/{}"),
    ("GET", "/ojs/v1/events"),
    ("POST", "/ojs/v1/cron"), ("GET", "/ojs/v1/cron"), ("GET", "/ojs/v1/cron/{}"),
    ("DELETE", "/ojs/v1/cron/{}"),
    ("PATCH", "/ojs/v1/cron/{}"), ("GET", "/metrics"),
    ("POST", "/ojs/v1/jobs/{}/activate"), ("PUT", "/ojs/v1/jobs/{}/progress"),
    ("GET", "/ojs/v1/jobs/{}/progress"), ("POST", "/ojs/v1/workers/progress"),
    ("POST", "/ojs/v1/jobs/{}/ack"), ("POST", "/ojs/v1/jobs/{}/nack"),
    ("POST", "/ojs/v1/jobs/{}/cancel"), ("GET", "/ojs/v1/queues/{}"),
    ("GET", "/ojs/v1/admin/tenants/{}"), ("GET", "/ojs/v1/admin/tenants/{}/stats"),
    ("POST", "/ojs/v1/schemas"), ("GET", "/ojs/v1/schemas/{}"), ("GET", "/ojs/v1/schemas/{}/versions"),
    ("DELETE", "/ojs/v1/schemas/fuzz.schema/{}"), ("PUT", "/ojs/v1/admin/schemas/fuzz.schema/{}"),
    ("GET", "/ojs/v1/admin/schemas/{}"),
]
# fmt: on
PARAM_ROUTES = [route for route in ROUTES if "{}" in route[1]]
LIST_ROUTES = ["/ojs/v1/queues", "/ojs/v1/dead-letter", "/ojs/v1/events", "/ojs/v1/cron"]


def path_segments() -> st.SearchStrategy[str]:
    """Path segments as sent: random text percent-encoded, and fixed ones verbatim."""
    encoded = st.one_of(
        st.text(max_size=40), unicode_text, st.integers(1, 3000).map(lambda n: "q" * n)
    ).map(lambda s: quote(s, safe=""))
    verbatim = st.sampled_from(
        [
            str(uuid.UUID(int=0)),
            "00000000-0000-7000-8000-000000000000",
            "..",
            ".",
            "%",
            "%%",
            "%zz",
            "%00",
            "%FF%FE",
            "%C0%AF",
            "%E2%80%AE",
            "a%2Fb",
            "null",
            "undefined",
            "-1",
            "0",
            "*",
            "default",
            "DEFAULT",
            "fuzz",
            "fuzz-cron",
            "évènement",
            "名字",
            "\u202e",
            "a" * 129,
            "a" * 256,
            "%7F",
        ]
    )
    return st.one_of(encoded, verbatim).filter(bool)


def header_values() -> st.SearchStrategy[bytes]:
    """Values h11 accepts: visible ASCII and obs-text, inner spaces and tabs."""
    visible = st.binary(min_size=0, max_size=300).map(
        lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80 or c in (0x20, 0x09)).strip(
            b" \t"
        )
    )
    return st.one_of(
        visible,
        st.sampled_from(
            [
                b"",
                b"1.0",
                b"1",
                b"2.0",
                b"1.0.0",
                b"v1",
                b"\xff\xfe",
                b"application/json",
                b"text/plain",
                b"application/openjobspec+json; charset=latin-1",
                b"multipart/form-data",
                b"Bearer",
                b"Bearer ",
                b"Basic YTpi",
                b"bearer " + API_KEY.encode(),
                b"x" * 8000,
            ]
        ).map(lambda b: b.strip(b" \t")),
        st.text(
            alphabet=st.characters(
                min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"
            ),
            max_size=200,
        ).map(lambda s: s.encode("latin-1")),
    )


# fmt: off
# Bodies no JSON library would produce; each one goes to every body endpoint (a sweep below).
MALFORMED_BODIES: list[bytes] = [
    b"", b" ", b"\n", b"null", b"[]", b"{}", b"0", b'"x"', b"{", b"}", b"[", b'{"a":1,}', b"NaN",
    b"Infinity",
    b"-Infinity", b"\xef\xbb\xbf{}", b"\x00", b"{\x00}", b'{"type":"a","args":[]}garbage',
    b'{"type":"a","args":[]} {"type":"b","args":[]}', b'{"type":"a","args":[],"type":"b"}',
    b'{"type":"a","args":[1e400]}', b'{"type":"a","args":[],"options":{"timeout":1e400}}',
    b'{"jobs":[1e400]}',
    # JSON escapes of lone surrogates
    b'{"type":"a","args":[],"meta":{"k":"\\ud800"}}', b'{"type":"a","args":["\\ud800"]}',
    b'{"queues":["\\ud800"]}', b'{"worker_id":"\\ud800"}', b'{"job_id":"\\ud800"}',
    b'{"name":"\\udfff"}',
    # invalid UTF-8 inside strings, keys and raw (echoed) values
    b'{"type":"\xff","args":[]}', b'{"\xff":1,"type":"a","args":[]}',
    b'{"type":"a","args":["\xff"]}',
    b'{"type":"a","args":[],"meta":{"k":"\xed\xa0\x80"}}', b'{"type":"a","args":[],"x":"\xc0\xaf"}',
    b'{"type":"a","args":[],"options":{"tags":["\xff"]}}',
    b'{"jobs":[{"type":"a","args":["\xff"]}]}',
    b'{"queues":["\xff"]}', b'{"worker_id":"\xff"}', b'{"job_id":"\xff"}',
    b'{"job_id":"x","result":"\xff"}',
    b'{"job_id":"x","error":{"message":"\xff"}}', b'{"name":"\xff","expression":"* * * * *"}',
    b'{"name":"n","expression":"\xff","job_template":{"type":"a"}}', b'{"enabled":"\xff"}',
    b'{"reason":"\xff"}',
]


# fmt: on
def status_ok(resp: httpx.Response) -> bool:
    return 200 <= resp.status_code < 300


# --- properties ------------------------------------------------------------------------------


@fuzz(100)
@given(
    endpoint=st.sampled_from(BODY_ENDPOINTS),
    body=st.one_of(
        st.binary(max_size=2000),
        st.sampled_from(MALFORMED_BODIES),
        st.builds(
            lambda prefix, tail: prefix + tail,
            st.sampled_from(
                [b'{"type":', b'{"type":"a","args":', b'{"queues":', b'{"jobs":[', b'{"name":']
            ),
            st.binary(max_size=200),
        ),
    ),
)
def test_arbitrary_bytes_bodies(server: FuzzServer, endpoint: tuple[str, str], body: bytes) -> None:
    method, path = endpoint
    check(server, *server.send(method, path, body=body))


@fuzz(150)
@given(
    endpoint=st.sampled_from(BODY_ENDPOINTS),
    value=st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(
                sorted(
                    {p.split(".")[0] for _, (_, ps) in OTHER_BODIES.items() for p in ps}
                    | {p.split(".")[0] for p in ENQUEUE_PATHS}
                )
            )
            | st.text(max_size=10),
            json_values,
            max_size=6,
        ),
    ),
)
def test_arbitrary_json_values(server: FuzzServer, endpoint: tuple[str, str], value: Any) -> None:
    method, path = endpoint
    check(server, *server.send(method, path, body=encode(value)))


@fuzz(150)
@given(doc=mutated(ENQUEUE_SKELETON, ENQUEUE_PATHS))
def test_structured_wrong_enqueue(server: FuzzServer, doc: dict[str, Any]) -> None:
    body = encode(doc)
    resp, sent = server.send("POST", "/ojs/v1/jobs", body=body)
    reply = check(server, resp, sent)
    if status_ok(resp):
        assert isinstance(reply.get("job"), dict), (
            f"2xx enqueue without a job: {sent} -> {resp.text[:300]}"
        )
        exercise(
            lambda m, p, b=None: check(server, *server.send(m, p, body=b)),
            reply["job"],
            lifecycle=True,
            step=len(body),
        )


def exercise(do: Any, job: dict[str, Any], *, lifecycle: bool, step: int = 0) -> None:
    """What was accepted must stay servable: read it back and (lifecycle) fetch it from its queue,
    heartbeat it, then nack / ack / cancel it (by `step`) and read it again, so a stored value that
    only breaks later (a deadline, a retry policy, a rendering) is found too. Other jobs the fetch
    returns are acked, so the shared queues stay short."""
    job_id = str(job.get("id"))
    do("GET", f"/ojs/v1/jobs/{quote(job_id, safe='')}")
    queue = job.get("queue")
    if not lifecycle or not isinstance(queue, str):
        return
    fetched = do(
        "POST", "/ojs/v1/workers/fetch", encode({"queues": [queue], "count": 10, "worker_id": "fz"})
    )
    for got in (fetched or {}).get("jobs") or []:
        got_id = str(got.get("id"))
        if got_id != job_id:
            do("POST", "/ojs/v1/workers/ack", encode({"job_id": got_id}))
            continue
        segment = quote(got_id, safe="")
        do(
            "POST",
            "/ojs/v1/workers/heartbeat",
            encode({"worker_id": "fz", "active_jobs": [got_id]}),
        )
        if step % 3 == 0:
            do(
                "POST",
                "/ojs/v1/workers/nack",
                encode({"job_id": got_id, "error": {"message": "fuzz"}}),
            )
        elif step % 3 == 1:
            do("POST", "/ojs/v1/workers/ack", encode({"job_id": got_id, "result": {"step": step}}))
        else:
            do("DELETE", f"/ojs/v1/jobs/{segment}")
        do("GET", f"/ojs/v1/jobs/{segment}")


@fuzz(150)
@given(data=st.data(), path=st.sampled_from(sorted(OTHER_BODIES)))
def test_structured_wrong_other_bodies(server: FuzzServer, data: st.DataObject, path: str) -> None:
    skeleton, paths = OTHER_BODIES[path]
    doc = data.draw(mutated(skeleton, paths), label="body")
    method = "PATCH" if path.startswith("/ojs/v1/cron/") else "POST"
    if path == "/ojs/v1/jobs/batch" and data.draw(st.booleans(), label="mutate element"):
        doc = {"jobs": [data.draw(mutated(ENQUEUE_SKELETON, ENQUEUE_PATHS), label="element")]}
    check(server, *server.send(method, path, body=encode(doc)))
    if path == "/ojs/v1/cron":
        # A registered cron must be readable, listable and deletable again.
        name = doc.get("name")
        if isinstance(name, str) and name:
            segment = quote(name, safe="")
            check(server, *server.send("GET", f"/ojs/v1/cron/{segment}"))
            check(server, *server.send("GET", "/ojs/v1/cron"))
            check(server, *server.send("DELETE", f"/ojs/v1/cron/{segment}"))


DEEP_TARGETS = [
    (
        "POST",
        "/ojs/v1/jobs",
        {"type": "fuzz.deep", "args": []},
        [
            "args",
            "meta",
            "options.metadata",
            "options.unique",
            "options.rate_limit",
            "unknown_top",
            "options.retry",
        ],
    ),
    ("POST", "/ojs/v1/jobs/batch", {"jobs": []}, ["jobs"]),
    ("POST", "/ojs/v1/workers/ack", {"job_id": str(uuid.UUID(int=0))}, ["result"]),
    (
        "POST",
        "/ojs/v1/workers/nack",
        {"job_id": str(uuid.UUID(int=0)), "error": {"message": "x"}},
        ["error.details", "error"],
    ),
    ("POST", "/ojs/v1/workers/heartbeat", {"worker_id": "deep"}, ["active_jobs", "queues"]),
    ("POST", "/ojs/v1/workers/fetch", {"queues": ["deep"]}, ["queues"]),
    (
        "POST",
        "/ojs/v1/cron",
        {"name": "deep", "expression": "0 0 1 1 *", "job_template": {"type": "fuzz.deep"}},
        ["job_template.args", "job_template.meta", "job_template.options", "meta", "args"],
    ),
    ("PATCH", "/ojs/v1/cron/deep", {}, ["enabled"]),
]


@fuzz(80)
@given(
    data=st.data(),
    target=st.sampled_from(DEEP_TARGETS),
    depth=st.one_of(
        st.integers(10, 5000),
        st.sampled_from([10, 64, 127, 128, 129, 255, 256, 500, 999, 1000, 1001, 2000, 4999, 5000]),
    ),
    kind=st.sampled_from(["list", "dict", "mixed"]),
)
def test_deeply_nested_bodies(
    server: FuzzServer,
    data: st.DataObject,
    target: tuple[str, str, dict[str, Any], list[str]],
    depth: int,
    kind: str,
) -> None:
    method, path, skeleton, fields = target
    doc = json.loads(json.dumps(skeleton))
    set_path(doc, data.draw(st.sampled_from(fields), label="field"), nested(depth, kind))
    body = encode(doc)
    resp, sent = server.send(method, path, body=body)
    check(server, resp, sent)
    if len(body) > MAX_BODY:
        assert resp.status_code == 413, f"over-limit body not 413: {sent} -> {resp.status_code}"
    # The whole body as one nested value, too.
    check(server, *server.send(method, path, body=nested(depth, kind).encode()))


@fuzz(30)
@given(
    endpoint=st.sampled_from(BODY_ENDPOINTS),
    size=st.one_of(st.integers(MAX_BODY + 1, 4 * MAX_BODY), st.just(MAX_BODY + 1)),
    shape=st.sampled_from(["json", "junk"]),
    chunked=st.booleans(),
)
def test_bodies_over_the_limit_are_413(
    server: FuzzServer,
    endpoint: tuple[str, str],
    size: int,
    shape: str,
    chunked: bool,
) -> None:
    method, path = endpoint
    body = padded_enqueue(size) if shape == "json" else b"x" * size
    assert len(body) == size
    sent = Sent(method, path, {"chunked": chunked}, body)
    try:
        content: Any = iter([body[i : i + 4096] for i in range(0, size, 4096)]) if chunked else body
        resp = server.client.request(
            method, path, content=content, headers={"Content-Type": JSON_TYPE}
        )
    except httpx.TransportError as err:
        # The server may close the connection after a 413 while the client is still writing.
        pytest.fail(f"no response to {sent}: {err!r}\n--- server log ---\n{server.log_tail()}")
    check(server, resp, sent)
    assert resp.status_code == 413, (
        f"over-limit body not 413: {sent} -> {resp.status_code} {resp.text[:200]}"
    )


@fuzz(20)
@given(size=st.integers(MAX_BATCH + 1, MAX_BATCH * 20), data=st.data())
def test_batches_over_the_limit_are_rejected(
    server: FuzzServer, size: int, data: st.DataObject
) -> None:
    queue = f"over-{uuid.uuid4().hex[:12]}"
    jobs = [{"type": "fuzz.batch", "args": [i], "options": {"queue": queue}} for i in range(size)]
    resp, sent = server.send("POST", "/ojs/v1/jobs/batch", body=encode({"jobs": jobs}))
    check(server, resp, sent)
    assert 400 <= resp.status_code < 500, (
        f"batch of {size} > {MAX_BATCH} accepted: {sent} -> {resp.status_code}"
    )
    assert queue_available(server, queue) == 0, f"a rejected batch of {size} enqueued jobs"


@fuzz(150)
@given(route=st.sampled_from(PARAM_ROUTES), segment=path_segments(), with_body=st.booleans())
def test_random_path_segments(
    server: FuzzServer, route: tuple[str, str], segment: str, with_body: bool
) -> None:
    method, template = route
    path = template.replace("{}", segment)
    body = b"{}" if with_body and method in ("POST", "PUT", "PATCH") else None
    if method == "PATCH" and with_body:
        body = b'{"enabled":true}'
    check(server, *server.send(method, path, body=body))


@fuzz(100)
@given(
    prefix=st.sampled_from(
        ["/ojs/v1", "/ojs", "", "/ojs/v1/jobs", "/ojs/v1/queues", "/ojs/v1/cron"]
    ),
    segments=st.lists(path_segments(), min_size=0, max_size=6),
    method=st.sampled_from(
        ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "ASSERT"]
    ),
    trailing=st.booleans(),
)
def test_random_paths_and_methods(
    server: FuzzServer,
    prefix: str,
    segments: list[str],
    method: str,
    trailing: bool,
) -> None:
    path = prefix + "".join("/" + s for s in segments) + ("/" if trailing else "")
    check(server, *server.send(method, path or "/"))


# fmt: off
QUERY_SAMPLES = [
    "", "0", "1", "-1", "50", "200", "201", "1000", "1001", "10000000", "10000001", "1e3", "0x10",
    "١٢", "  5", "5 ", "+5", "9" * 40, "NaN", "inf", "null", "0-0", "1-1", "(1-0", "-", "+", "$",
    "999999999999999-0", "18446744073709551616-0", "1-18446744073709551616", "job.*", "*",
    "job.completed,queue.paused", ",,,", "%", "%zz", "%00", "%FF",
]
# fmt: on
query_values = st.one_of(
    st.sampled_from(QUERY_SAMPLES),
    st.text(max_size=30),
    st.integers().map(str),
)


QUERY_KEYS = [
    "limit",
    "offset",
    "cursor",
    "after",
    "types",
    "type",
    "queues",
    "queue",
    "job_types",
    "state",
    "page",
    "per_page",
]


@fuzz(80)
@given(
    path=st.sampled_from(LIST_ROUTES),
    params=st.dictionaries(st.sampled_from(QUERY_KEYS), query_values, min_size=1, max_size=4),
    extra=st.lists(st.tuples(st.text(max_size=8), query_values), max_size=2),
    raw=st.booleans(),
)
def test_random_query_strings(
    server: FuzzServer,
    path: str,
    params: dict[str, str],
    extra: list[tuple[str, str]],
    raw: bool,
) -> None:
    pairs = [*params.items(), *extra]
    if raw:  # values sent without encoding (only where the URL stays parseable)
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='%+,*()$-')}" for k, v in pairs)
    else:
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    check(server, *server.send("GET", f"{path}?{query}"))


HEADER_ROUTES = [
    ("GET", "/ojs/v1/health"),
    ("GET", "/ojs/manifest"),
    ("GET", "/ojs/v1/queues"),
    ("POST", "/ojs/v1/jobs"),
    ("POST", "/ojs/v1/workers/fetch"),
    ("GET", "/ojs/v1/jobs/" + str(uuid.UUID(int=0))),
    ("POST", "/ojs/v1/cron"),
    ("GET", "/ojs/v1/events"),
]
ROUTE_BODIES = {
    "/ojs/v1/jobs": b'{"type":"fuzz.headers","args":[]}',
    "/ojs/v1/workers/fetch": b'{"queues":["fuzz-empty"]}',
    "/ojs/v1/cron": (
        b'{"name":"fuzz-headers","expression":"0 0 1 1 *","job_template":{"type":"fuzz.h"}}'
    ),
}


@fuzz(120)
@given(
    route=st.sampled_from(HEADER_ROUTES),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-Request-ID",
                "OJS-Version",
                "Content-Type",
                "Authorization",
                "Accept",
                "Accept-Encoding",
                "Content-Encoding",
                "Transfer-Encoding-X",
                "Expect",
                "X-Forwarded-For",
                "If-None-Match",
                "Range",
                "Cookie",
                "Host",
                "X-OJS-Tenant",
            ]
        ),
        header_values(),
        min_size=1,
        max_size=4,
    ),
)
def test_random_header_values(
    server: FuzzServer, route: tuple[str, str], headers: dict[str, bytes]
) -> None:
    method, path = route
    if "Host" in headers and not headers["Host"]:
        headers["Host"] = b"x"
    resp, sent = server.send(method, path, body=ROUTE_BODIES.get(path), headers=headers)
    check(server, resp, sent)
    given_id = headers.get("X-Request-ID")
    if given_id and len(given_id) <= 128:
        echoed = resp.headers.raw and {k.lower(): v for k, v in resp.headers.raw}.get(
            b"x-request-id"
        )
        assert echoed == given_id, f"X-Request-ID not echoed: {sent} -> {echoed!r}"


@fuzz(80)
@given(
    authorization=st.one_of(header_values(), st.just(b"Bearer " + API_KEY.encode())),
    route=st.sampled_from(
        [
            ("GET", "/ojs/v1/queues"),
            ("POST", "/ojs/v1/jobs"),
            ("GET", "/ojs/manifest"),
            ("GET", "/ojs/v1/health"),
            ("GET", "/nope"),
        ]
    ),
)
def test_random_authorization(
    auth_server: FuzzServer, authorization: bytes, route: tuple[str, str]
) -> None:
    method, path = route
    body = ROUTE_BODIES.get(path)
    resp, sent = auth_server.send(
        method, path, body=body, headers={"Authorization": authorization}, auth=False
    )
    check(auth_server, resp, sent)
    scheme, _, token = authorization.partition(b" ")
    right_key = (
        scheme.lower() == b"bearer" and token.strip() == API_KEY.encode()
    )  # the scheme is case-blind
    if path != "/ojs/v1/health" and not right_key:
        assert resp.status_code == 401, f"a wrong key was let in: {sent} -> {resp.status_code}"
    if right_key and path != "/nope":
        assert resp.status_code < 300, f"the right key was refused: {sent} -> {resp.status_code}"


# --- deterministic sweeps: every field, segment and query key against fixed bad values ---

# fmt: off
NASTY_FIXED: list[Any] = [
    None, True, False, 0, -1, 101, -101, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    0.5, -0.0, 1e300, 1e308, RawJSON("1e400"), RawJSON("-1e400"), RawJSON("1" + "0" * 400),
    "", " ", "x" * 300, "\u0000", RawJSON('"\\ud800"'), "\ud800", "\udcff", "名字", "HIGH",
    "+PT1S", "+P9999Y", "9999-12-31T23:59:59Z", "PT0S",
    [], {}, [1], {"a": 1}, ["x"] * 101, nested(200, "list"),
]
# fmt: on


def fixed_for(path: str) -> list[Any]:
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("scheduled_at", "delay_until", "expires_at", "started_at"):
        return NASTY_FIXED + TIMESTAMPS_FIXED
    if leaf in ("initial_interval", "max_interval", "visibility_timeout", "period", "interval"):
        return NASTY_FIXED + DURATIONS_FIXED
    if leaf in ("expression", "cron", "schedule"):
        return NASTY_FIXED + CRON_FIXED
    if leaf == "timezone":
        return NASTY_FIXED + TIMEZONES_FIXED
    return NASTY_FIXED


# Sweep entries that set several fields to the same value (the value only gets through together).
JOINT_FIELDS: dict[str, tuple[str, ...]] = {
    "options.retry.interval_ms": (
        "options.retry.initial_interval_ms",
        "options.retry.max_interval_ms",
    ),
    "options.retry.interval": ("options.retry.initial_interval", "options.retry.max_interval"),
}


# Enqueue fields whose stored value is used after enqueue (fetch, heartbeat, nack, rendering):
# an accepted value for one of these is driven through the job lifecycle, the rest are read back.
LIFECYCLE_FIELDS = (
    "args",
    "meta",
    "retry",
    "timeout",
    "visibility_timeout",
    "scheduled_at",
    "expires_at",
    "unique",
    "tags",
    "priority",
    "unknown_top",
    "options.",
)


SWEEP_TARGETS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("POST", "/ojs/v1/jobs", ENQUEUE_SKELETON, [*ENQUEUE_PATHS, *JOINT_FIELDS]),
    *[
        ("PATCH" if path.startswith("/ojs/v1/cron/") else "POST", path, skeleton, paths)
        for path, (skeleton, paths) in OTHER_BODIES.items()
    ],
]


@pytest.mark.parametrize("target", SWEEP_TARGETS, ids=[f"{m} {p}" for m, p, _, _ in SWEEP_TARGETS])
def test_every_field_with_every_bad_value(
    server: FuzzServer, target: tuple[str, str, dict[str, Any], list[str]]
) -> None:
    method, path, skeleton, paths = target
    sweep = Sweep(server)
    for n, field_path in enumerate(paths):
        for m, value in enumerate(fixed_for(field_path)):
            doc = json.loads(json.dumps(skeleton))
            if path == "/ojs/v1/jobs":  # a few shared queues keep the queue list short
                doc["options"]["queue"] = f"sweep-{m % 8}"
            for one_path in JOINT_FIELDS.get(field_path, (field_path,)):
                set_path(doc, one_path, value)
            key = f"{field_path}={dumps(value)[:40]}"
            resp, reply = sweep.run(key, method, path, body=encode(doc))
            if path == "/ojs/v1/jobs" and status_ok(resp) and isinstance(reply, dict):
                exercise(
                    lambda m, p, b=None, key=key: sweep.run(
                        f"{key} (then {m} {p[:40]})", m, p, body=b
                    )[1],
                    reply["job"],
                    lifecycle=field_path.startswith(LIFECYCLE_FIELDS),
                    step=n + m,
                )
    sweep.verify()


def test_every_malformed_body_on_every_endpoint(server: FuzzServer) -> None:
    sweep = Sweep(server)
    for method, path in BODY_ENDPOINTS:
        for body in MALFORMED_BODIES:
            resp, reply = sweep.run(f"{method} {path} {body[:50]!r}", method, path, body=body)
            if path == "/ojs/v1/jobs" and status_ok(resp) and isinstance(reply, dict):
                job_id = quote(str(reply["job"].get("id")), safe="")
                sweep.run(f"{body[:50]!r} (read back)", "GET", f"/ojs/v1/jobs/{job_id}")
    sweep.verify()


# fmt: off
FIXED_SEGMENTS = [
    "00000000-0000-7000-8000-000000000000", "%25", "%25zz", "%00", "%FF%FE", "%C0%AF", "%E2%80%AE",
    "a%2Fb",
    "null", "-1", "*", "default", "DEFAULT", "%C3%A9v%C3%A8nement", "%E5%90%8D", "a" * 129,
    "a" * 300,
    "q" * 3000, "%7F", "%20", "a%20b", "..%2F..", "%5Cx", "%22", "%27", "%3Cscript%3E",
    "%F0%9F%98%80",
    "%ED%A0%80", "x%0D%0Ay", "1e400", "evt_00000000-0000-7000-8000-000000000000",
]
# fmt: on


def test_every_route_with_every_bad_segment(server: FuzzServer) -> None:
    sweep = Sweep(server)
    for method, template in PARAM_ROUTES:
        for segment in FIXED_SEGMENTS:
            body = (
                b'{"enabled":true}'
                if method == "PATCH"
                else (b"{}" if method in ("POST", "PUT") else None)
            )
            sweep.run(
                f"{method} {template} {segment[:20]}",
                method,
                template.replace("{}", segment),
                body=body,
            )
    sweep.verify()


# fmt: off
FIXED_QUERY_VALUES = [
    "", "0", "-1", "1", "200", "201", "1000", "1001", "10000001", "1e3", "0x10", "%D9%A1%D9%A2",
    "+5", "9" * 40,
    "NaN", "null", "0-0", "1-1", "(1-0", "-", "+", "$", "garbage", "999999999999999-0",
    "18446744073709551616-0",
    "1-18446744073709551616", "job.*", "*", "job.completed,queue.paused", ",,,", "%25", "%00",
    "%FF", "x" * 3000,
]
# fmt: on


def test_every_query_key_with_every_bad_value(server: FuzzServer) -> None:
    sweep = Sweep(server)
    for path in LIST_ROUTES:
        for key in QUERY_KEYS[:9]:  # state, page, per_page are ignored by every list route
            for value in FIXED_QUERY_VALUES:
                sweep.run(f"{path}?{key}={value[:20]}", "GET", f"{path}?{key}={value}")
    sweep.verify()


# --- explicit bounds checks --------------------------------------------------------------------


def padded_enqueue(size: int) -> bytes:
    """A valid enqueue request of exactly `size` bytes (padding in meta)."""
    head = b'{"type":"fuzz.limit","args":[],"options":{"queue":"limit"},"meta":{"pad":"'
    tail = b'"}}'
    pad = size - len(head) - len(tail)
    assert pad >= 0
    return head + b"p" * pad + tail


def queue_available(server: FuzzServer, queue: str) -> int:
    resp, sent = server.send("GET", f"/ojs/v1/queues/{queue}/stats")
    body = check(server, resp, sent)
    assert resp.status_code == 200, f"stats failed: {sent} -> {resp.status_code}"
    return int(body["queue"]["available"]) + int(body["queue"]["scheduled"])


def test_body_exactly_at_the_limit_is_accepted(server: FuzzServer) -> None:
    body = padded_enqueue(MAX_BODY)
    resp, sent = server.send("POST", "/ojs/v1/jobs", body=body)
    check(server, resp, sent)
    assert resp.status_code == 201, f"{sent} -> {resp.status_code} {resp.text[:300]}"
    for path in ("/ojs/v1/workers/ack", "/ojs/v1/cron"):  # at the limit: rejected for content only
        resp, sent = server.send("POST", path, body=b" " * (MAX_BODY - 2) + b"{}")
        check(server, resp, sent)
        assert resp.status_code != 413, f"{sent} -> 413 at exactly the limit"


def test_body_one_byte_over_the_limit_is_413(server: FuzzServer) -> None:
    for path in ("/ojs/v1/jobs", "/ojs/v1/jobs/batch", "/ojs/v1/workers/ack", "/ojs/v1/cron"):
        resp, sent = server.send("POST", path, body=padded_enqueue(MAX_BODY + 1))
        body = check(server, resp, sent)
        assert resp.status_code == 413, f"{sent} -> {resp.status_code}"
        assert body["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(server: FuzzServer) -> None:
    """No Content-Length: the limit must hold while the body streams in."""
    body = padded_enqueue(MAX_BODY + 1)
    resp = server.client.post(
        "/ojs/v1/jobs",
        content=iter([body[:1000], body[1000:]]),
        headers={"Content-Type": JSON_TYPE},
    )
    check(server, resp, Sent("POST", "/ojs/v1/jobs", {"Transfer-Encoding": "chunked"}, body))
    assert resp.status_code == 413


def test_lying_content_length_is_answered(server: FuzzServer) -> None:
    """A Content-Length above the limit is refused before the body is read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall(
            b"POST /ojs/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999999\r\n\r\n{}"
        )
        reply = _read_head(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_batch_at_the_max_size_is_accepted(server: FuzzServer) -> None:
    queue = f"atmax-{uuid.uuid4().hex[:12]}"
    jobs = [
        {"type": "fuzz.batch", "args": [i], "options": {"queue": queue}} for i in range(MAX_BATCH)
    ]
    resp, sent = server.send("POST", "/ojs/v1/jobs/batch", body=encode({"jobs": jobs}))
    body = check(server, resp, sent)
    assert resp.status_code == 201, f"{sent} -> {resp.status_code} {resp.text[:300]}"
    assert body["count"] == MAX_BATCH and len(body["jobs"]) == MAX_BATCH
    assert queue_available(server, queue) == MAX_BATCH


def test_batch_one_over_the_max_size_is_rejected_and_enqueues_nothing(server: FuzzServer) -> None:
    queue = f"overmax-{uuid.uuid4().hex[:12]}"
    jobs = [
        {"type": "fuzz.batch", "args": [i], "options": {"queue": queue}}
        for i in range(MAX_BATCH + 1)
    ]
    resp, sent = server.send("POST", "/ojs/v1/jobs/batch", body=encode({"jobs": jobs}))
    check(server, resp, sent)
    assert 400 <= resp.status_code < 500, f"{sent} -> {resp.status_code}"
    assert queue_available(server, queue) == 0


def test_batch_with_one_invalid_job_enqueues_nothing(server: FuzzServer) -> None:
    queue = f"atomic-{uuid.uuid4().hex[:12]}"
    jobs: list[Any] = [
        {"type": "fuzz.batch", "args": [i], "options": {"queue": queue}}
        for i in range(MAX_BATCH - 1)
    ]
    jobs.append({"type": "fuzz.batch", "args": "not-a-list", "options": {"queue": queue}})
    resp, sent = server.send("POST", "/ojs/v1/jobs/batch", body=encode({"jobs": jobs}))
    check(server, resp, sent)
    assert 400 <= resp.status_code < 500, f"{sent} -> {resp.status_code}"
    assert queue_available(server, queue) == 0


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_unknown_method_gets_an_http_response(server: FuzzServer) -> None:
    """The conformance runner sends `ASSERT / HTTP/1.1`; any status will do, silence will not."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall(
            b"ASSERT / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"
        )
        reply = _read_head(sock)
    assert reply.startswith(b"HTTP/1.1 "), f"no HTTP response to ASSERT: {reply[:200]!r}"
    status = int(reply.split(b" ", 2)[1])
    assert status < 500, reply[:300]


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /ojs/v1/jobs/%ZZ HTTP/1.1",
        b"GET /ojs/v1/jobs/%ff%fe HTTP/1.1",
        b"GET /ojs/v1/jobs/\xff\xfe HTTP/1.1",
        b"GET //ojs//v1//health HTTP/1.1",
        b"GET /ojs/v1/jobs/../../etc/passwd HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET http://evil/ojs/v1/health HTTP/1.1",
        b"GET /ojs/v1/events?after=%ZZ&limit=%FF HTTP/1.1",
        b"GET /ojs/v1/cron/" + "名".encode() + b" HTTP/1.1",
    ],
)
def test_raw_request_lines(server: FuzzServer, request_line: bytes) -> None:
    """Request lines no client library would send."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\nX-Request-ID: \xff\xfe\x80\r\n\r\n")
        reply = _read_head(sock)
    assert reply.startswith(b"HTTP/1.1 "), f"no HTTP response to {request_line!r}: {reply[:200]!r}"
    status = int(reply.split(b" ", 2)[1])
    assert status < 500, (
        f"{request_line!r} -> {reply[:300]!r}\n--- server log ---\n{server.log_tail()}"
    )


@pytest.mark.parametrize(
    "result",
    [b'"\xff"', b'["\xed\xa0\x80"]', b'{"k":"\xc0\xaf"}', b"[" * 900 + b"]" * 900, b"1e400"],
    ids=["ff", "surrogate-bytes", "overlong", "deep", "huge-number"],
)
def test_ack_result_is_refused_or_stays_servable(server: FuzzServer, result: bytes) -> None:
    """An ack `result` is stored verbatim: what the server accepts there must not make the job's
    later reads unservable."""
    queue = f"ack-{uuid.uuid4().hex[:12]}"
    resp, sent = server.send(
        "POST",
        "/ojs/v1/jobs",
        body=encode({"type": "fuzz.ack", "args": [], "options": {"queue": queue}}),
    )
    job_id = check(server, resp, sent)["job"]["id"]
    resp, sent = server.send("POST", "/ojs/v1/workers/fetch", body=encode({"queues": [queue]}))
    assert [job["id"] for job in check(server, resp, sent)["jobs"]] == [job_id]
    body = b'{"job_id":"' + job_id.encode() + b'","result":' + result + b"}"
    check(server, *server.send("POST", "/ojs/v1/workers/ack", body=body))
    check(server, *server.send("GET", f"/ojs/v1/jobs/{job_id}"))
