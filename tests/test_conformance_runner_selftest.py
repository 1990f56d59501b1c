"""End-to-end self-test of the conformance runner against a tiny in-process HTTP server.

Synthetic test files are written to ``tmp_path``; the official suites are only loaded (never run)
to check that they parse.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conformance.__main__ import main
from tests.conformance.runner import ConformanceError, Report, load_tests, run_suites

MEDIA = "application/openjobspec+json"
OFFICIAL_SUITES = Path(
    os.environ.get("OJS_CONFORMANCE_SUITES", "/work/shared/ojs-conformance/suites")
)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.fetch_barrier = threading.Barrier(2, timeout=2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self, method: str | None = None, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and (path is None or r.path == path)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                           body, time.monotonic())
        with self.server.lock:
            self.server.requests.append(request)
        status, payload = self.route(request)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, bytes) else MEDIA)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def route(self, request: Received) -> tuple[int, Any]:
        if request.method == "POST" and request.path == "/jobs":
            return 201, {"job": {"id": "job-1", "count": 7, "ratio": 2.5,
                                 "meta": {"b": 1, "a": "x"}, "state": "available"}}
        if request.method == "GET" and request.path.startswith("/jobs/"):
            return 200, {"job": {"id": request.path.removeprefix("/jobs/")}}
        if request.path == "/fetch":
            try:
                self.server.fetch_barrier.wait()
            except threading.BrokenBarrierError:
                return 500, {"error": "fetches were not concurrent"}
            return 200, {"jobs": []}
        if request.path == "/array":
            return 200, [{"id": "x"}]
        if request.path == "/text":
            return 200, b"plain text body"
        if request.path in ("/echo", "/reset", "/"):
            return 200, {"ok": True}
        return 404, {"error": {"code": "not_found"}}

    do_GET = do_POST = do_PUT = do_DELETE = do_ASSERT = handle_any


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()
    thread.join(timeout=5)


def step(step_id: str, action: str, path: str = "", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": action, "path": path, **extra}


def write_case(directory: Path, filename: str, test_id: str, level: Any,
               steps: list[dict[str, Any]], **extra: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    case = {"test_id": test_id, "level": level, "category": "selftest",
            "name": f"case-{test_id.lower()}", "spec_ref": "selftest", "steps": steps, **extra}
    (directory / filename).write_text(json.dumps(case, indent=2), encoding="utf-8")


T = "{{steps.s1.response.body.job.%s}}"

TEMPLATES = [
    step("s1", "POST", "/jobs", body={"type": "x"}, assertions={
        "status": 201, "headers": {"content-type": MEDIA},
        "body": {"$.job.id": "string:nonempty", "$.job.count": 7, "$.job.state": "available"}}),
    step("s2", "GET", "/jobs/" + T % "id",
         assertions={"status": 200, "body": {"$.job.id": T % "id"}}),
    step("s3", "POST", "/echo", capture={"job_id": "$.job.id"}, body={
        "id": T % "id", "count": T % "count", "ratio": T % "ratio", "meta": T % "meta",
        "unknown": "{{steps.nope.response.body.x}}", "capture": "{{job_id}}"}),
    step("s4", "POST", "/echo", raw_body="ignored", repeat=3),
    step("s5", "PUT", "/echo", headers={"Content-Type": "application/json"}, body={"a": 1}),
]
PARALLEL = [
    step("s1", "POST", "/fetch", parallel_with="s2", body={"worker_id": "a"},
         assertions={"status": 200, "body": {"$.jobs": []}}),
    step("s2", "POST", "/fetch", parallel_with="s1", body={"worker_id": "b"},
         assertions={"status": 200}),
    {"id": "s3", "action": "ASSERT", "assertions": {"exclusive_claim": {"fetches": []}}},
]
DELAYS = [
    step("s1", "GET", "/jobs/d1"),
    step("s2", "GET", "/jobs/d2", delay_ms=40),
    {"id": "s3", "action": "WAIT", "delay_ms": 20},
    step("s4", "GET", "/jobs/d3"),
    {"id": "s5", "action": "WAIT", "duration_ms": 10},
]
FAILING = [
    step("s1", "GET", "/array", assertions={"status": 200, "body": {"$.id": "not checked"}}),
    step("s2", "GET", "/array", assertions={"body": {"$or": [{"$.jobs": []}]}}),
    step("s3", "GET", "/jobs/z", assertions={"status": 201}),
    step("s4", "GET", "/text", assertions={"body_contains": ["plain text"]}),
]
SETUP_ERROR = [step("s2", "GET", "/jobs/never")]
EXT = [step("s1", "POST", "/jobs", assertions={"body": {"$.job.id": {"$type": "string"}}})]


@pytest.fixture
def suites(tmp_path: Path) -> Path:
    root = tmp_path / "suites"
    write_case(root / "z-last", "templates.json", "T0-001", 0, TEMPLATES)
    write_case(root, "a-first.json", "T0-002", 0, PARALLEL)
    write_case(root / "m", "delays.json", "T1-001", 1, DELAYS)
    write_case(root / "m", "failing.json", "T1-002", "1", FAILING)
    write_case(root, "setup.json", "T2-001", 2, SETUP_ERROR,
               setup={"steps": [step("s1", "GET", "/jobs/a", assertions={"status": 418})]})
    write_case(root / "ext", "ext.json", "EXT-001", "ext", EXT)
    (root / "README.md").write_text("not a test", encoding="utf-8")
    hidden = tmp_path / "elsewhere"
    write_case(hidden, "hidden.json", "T0-999", 0, [step("s1", "GET", "/nowhere")])
    (root / "linked").symlink_to(hidden, target_is_directory=True)
    return root


@pytest.fixture
def report(server: FakeServer, suites: Path) -> Report:
    return run_suites(server.url, suites, reset_url=server.url + "/reset", timeout_s=5)


def by_id(report: Report) -> dict[str, Any]:
    return {result.test_id: result for result in report.results}


def test_report_statuses_levels_and_conformance(report: Report) -> None:
    assert [r.test_id for r in report.results] == [
        "EXT-001", "T0-001", "T0-002", "T1-001", "T1-002", "T2-001"]  # sorted, no symlinked dir
    status = {test_id: result.status for test_id, result in by_id(report).items()}
    assert status == {"EXT-001": "fail", "T0-001": "pass", "T0-002": "pass", "T1-001": "pass",
                      "T1-002": "fail", "T2-001": "error"}
    levels = report.by_level()
    assert sorted(levels) == [0, 1, 2, 99]
    assert (levels[0].total, levels[0].passed, levels[0].all_pass) == (2, 2, True)
    assert (levels[1].total, levels[1].failed, levels[1].all_pass) == (2, 1, False)
    assert (levels[2].errored, levels[99].failed) == (1, 1)
    assert report.conformant_level == 0
    assert not report.all_passed
    table = report.format_table()
    assert "T1-002" in table and "FAIL" in table and "PARTIAL CONFORMANCE (Level 0)" in table


def test_failure_messages(report: Report) -> None:
    failing = by_id(report)["T1-002"]
    assert [(f.step_id, f.message) for f in failing.failures] == [
        ("s2", "No $or alternative matched"), ("s3", "Expected status 201, got 200")]
    setup = by_id(report)["T2-001"]
    expected = ["Setup step failed: Expected status 418, got 200"]
    assert [f.message for f in setup.failures] == expected
    assert setup.step_results == []
    ext = by_id(report)["EXT-001"].failures
    assert len(ext) == 1 and ext[0].message.startswith('Assertion failed at "$.job.id"')


def test_templates_bodies_and_content_type(server: FakeServer, report: Report) -> None:
    assert [r.path for r in server.received("GET") if r.path.startswith("/jobs/job")] == [
        "/jobs/job-1"]
    s3, s4 = server.received("POST", "/echo")
    assert s3.headers["content-type"] == MEDIA
    sent = s3.body.decode()
    for fragment in ('"id": "job-1"', '"count": "7"', '"ratio": "2.5"', '"meta": "{"a":"x","b":1}"',
                     '"unknown": "{{steps.nope.response.body.x}}"', '"capture": "{{job_id}}"'):
        assert fragment in sent
    assert s4.body == b"" and "content-type" not in s4.headers
    assert s4.headers["content-length"] == "0"
    (s5,) = server.received("PUT", "/echo")
    assert s5.headers["content-type"] == "application/json" and json.loads(s5.body) == {"a": 1}


def test_parallel_with_and_assert_request(server: FakeServer, report: Report) -> None:
    # the barrier in /fetch only releases when both fetches are in flight at once
    assert [r.body for r in server.received("POST", "/fetch")] != []
    assert by_id(report)["T0-002"].passed
    (assert_request,) = server.received("ASSERT")
    assert assert_request.path == "/" and assert_request.body == b""


def test_delays_and_waits(server: FakeServer, report: Report) -> None:
    times = {r.path: r.at for r in server.received("GET")}
    assert times["/jobs/d2"] - times["/jobs/d1"] >= 0.040
    assert times["/jobs/d3"] - times["/jobs/d2"] >= 0.040  # a delay_ms-only WAIT sleeps twice


def test_state_is_reset_before_every_test(server: FakeServer, report: Report) -> None:
    resets = server.received("POST", "/reset")
    assert len(resets) == len(report.results) and all(r.body == b"" for r in resets)


def test_filters(server: FakeServer, suites: Path) -> None:
    only = run_suites(server.url, suites, test_id="T1-002")
    assert [r.test_id for r in only.results] == ["T1-002"]
    ext = run_suites(server.url, suites, level="ext")
    assert [r.test_id for r in ext.results] == ["EXT-001"] and ext.conformant_level == -1
    assert run_suites(server.url, suites, level=0).conformant_level == 0
    with pytest.raises(ConformanceError):
        run_suites(server.url, suites, test_id="NOPE")
    with pytest.raises(ConformanceError):
        run_suites(server.url, suites / "missing")


def test_unreachable_server_fails_the_test(suites: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = run_suites(f"http://127.0.0.1:{port}", suites, test_id="T1-002", timeout_s=2)
    (result,) = report.results
    assert result.status == "fail"
    assert result.failures[0].message.startswith("HTTP request failed")


def test_redis_flushdb_before_each_test(server: FakeServer, suites: Path, redis_url: str,
                                        redis_client: redis.Redis) -> None:
    redis_client.set("ojs:leftover", "1")
    run_suites(server.url, suites, test_id="T0-001", redis_url=redis_url)
    assert redis_client.exists("ojs:leftover") == 0


def test_unreachable_redis_is_ignored(server: FakeServer, suites: Path) -> None:
    report = run_suites(server.url, suites, test_id="T0-001", redis_url="redis://127.0.0.1:1/0")
    assert report.all_passed


def test_cli(server: FakeServer, suites: Path, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-url", server.url, "-suites", str(suites), "-test", "T0-001"]) == 0
    assert "CONFORMANT (Level 0)" in capsys.readouterr().out
    report_file = tmp_path / "report.json"
    code = main(["-url", server.url, "-suites", str(suites), "-level", "1", "-output", "json",
                 "-report-file", str(report_file)])
    assert code == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"]["by_level"]["1"] == {
        "total": 2, "passed": 1, "failed": 1, "skipped": 0, "errored": 0, "all_pass": False}
    assert json.loads(report_file.read_text())["conformant_level"] == -1
    assert main(["-url", server.url, "-suites", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not OFFICIAL_SUITES.is_dir(), reason="official suites not available")
def test_official_suites_load() -> None:
    tests = load_tests(OFFICIAL_SUITES)
    assert len(tests) > 200
    assert [t.test_id for t in tests] == sorted(t.test_id for t in tests)
    assert {t.level for t in tests} <= {0, 1, 2, 3, 4, 99}
    level0 = load_tests(OFFICIAL_SUITES / "level-0-core")
    assert level0 and all(t.level == 0 for t in level0)
