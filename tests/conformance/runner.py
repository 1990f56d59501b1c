"""Run the official OJS conformance JSON suites against a live HTTP server.

Mirrors the official Go runner (openjobspec/ojs-conformance ``runner/http/runner.go``), quirks
included; see ``shared/spec-digest.md`` section 0. :func:`run_suites` is a pure function: each call
owns its HTTP client and Redis connection, so several levels can run at once in threads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import redis

from tests.conformance.matchers import (
    PathError,
    go_json_marshal,
    go_quote,
    go_sprint,
    match_assertion,
    match_header,
    match_status,
    parse_body,
    resolve_json_path,
    resolve_matcher_templates,
    resolve_templates,
)

logger = logging.getLogger(__name__)

OJS_MEDIA_TYPE = "application/openjobspec+json"
EXT_LEVEL = 99
MIN_TIMING_TOLERANCE_MS = 100.0
Step = dict[str, Any]


class ConformanceError(Exception):
    """The suites could not be loaded, or no test matched the filters (the Go runner exits 2)."""


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest test class

    test_id: str
    level: int
    category: str
    name: str
    spec_ref: str
    file_path: str
    steps: list[Step]
    setup: list[Step] = field(default_factory=list)
    teardown: list[Step] = field(default_factory=list)


# --------------------------------------------------------------------------- results, report

LEVEL_NAMES = {0: "Core", 1: "Reliable", 2: "Scheduled", 3: "Orchestration", 4: "Advanced",
               EXT_LEVEL: "Extension"}
Status = Literal["", "pass", "fail", "error"]


@dataclass(frozen=True)
class Failure:
    step_id: str
    message: str
    field: str = ""
    expected: str = ""
    actual: str = ""


@dataclass(frozen=True)
class StepResult:
    step_id: str
    status_code: int = 0
    headers: httpx.Headers | None = None
    body: bytes = b""
    duration_ms: int = 0
    parsed: dict[str, Any] | None = None

    def header(self, name: str) -> str:
        """Go's ``http.Header.Get``: the first value, or ``""``."""
        values = self.headers.get_list(name) if self.headers is not None else []
        return values[0] if values else ""


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    test_id: str
    name: str
    level: int
    category: str
    spec_ref: str
    file_path: str
    status: Status = ""
    duration_ms: int = 0
    failures: list[Failure] = field(default_factory=list)
    step_results: list[StepResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id, "name": self.name, "level": self.level,
            "category": self.category, "spec_ref": self.spec_ref, "status": self.status,
            "duration_ms": self.duration_ms, "file_path": self.file_path,
            "failures": [vars(failure) for failure in self.failures],
            "step_results": [
                {"step_id": sr.step_id, "status_code": sr.status_code,
                 "duration_ms": sr.duration_ms, "body": sr.body.decode("utf-8", "replace")}
                for sr in self.step_results
            ],
        }


@dataclass
class LevelSummary:
    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errored: int = 0

    @property
    def all_pass(self) -> bool:
        return self.failed == 0 and self.errored == 0

    def add(self, status: Status) -> None:
        self.total += 1
        if status == "pass":
            self.passed += 1
        elif status == "error":
            self.errored += 1
        else:
            self.failed += 1


@dataclass
class Report:
    target: str
    results: list[TestResult]
    duration_ms: int = 0
    requested_level: int = -1
    run_at: str = ""

    def by_level(self) -> dict[int, LevelSummary]:
        levels: dict[int, LevelSummary] = {}
        for result in self.results:
            levels.setdefault(result.level, LevelSummary()).add(result.status)
        return dict(sorted(levels.items()))

    def totals(self) -> LevelSummary:
        summary = LevelSummary()
        for result in self.results:
            summary.add(result.status)
        return summary

    @property
    def conformant_level(self) -> int:
        """Highest N in 0..4 with every level 0..N passing; levels without tests are skipped."""
        levels, reached = self.by_level(), -1
        for level in range(5):
            if level not in levels:
                continue
            if not (levels[level].all_pass and levels[level].total > 0):
                break
            reached = level
        return reached

    @property
    def all_passed(self) -> bool:
        """Go's ``conformant`` flag (the exit code): no failed and no errored test."""
        return self.totals().all_pass

    @property
    def failures(self) -> list[TestResult]:
        return [result for result in self.results if result.status in ("fail", "error")]

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "test_suite_version": "1.0", "target": self.target, "run_at": self.run_at,
            "duration_ms": self.duration_ms, "requested_level": self.requested_level,
            "results": {**vars(totals), "by_level": {
                str(level): {**vars(summary), "all_pass": summary.all_pass}
                for level, summary in self.by_level().items()
            }},
            "conformant": self.all_passed, "conformant_level": self.conformant_level,
            "failures": [result.to_dict() for result in self.failures],
        }

    def format_table(self, verbose: bool = False) -> str:
        labels = {"pass": "PASS", "fail": "FAIL", "error": "ERR"}
        lines = ["", "=" * 40, "  OJS Conformance Test Results", "=" * 40,
                 f"  Target:    {self.target}", f"  Run at:    {self.run_at}",
                 f"  Duration:  {self.duration_ms}ms", "-" * 40, "",
                 f"  {'TEST ID':<14} {'NAME':<40} {'STATUS':<8} DURATION",
                 f"  {'-' * 14} {'-' * 40} {'-' * 8} {'-' * 10}"]
        for result in self.results:
            name = result.name if len(result.name) <= 40 else result.name[:37] + "..."
            lines.append(f"  {result.test_id:<14} {name:<40} "
                         f"{labels.get(result.status, result.status):<8} {result.duration_ms}ms")
            for failure in result.failures:
                lines.append(f"    -> [{failure.step_id}] {failure.message}")
                if verbose and failure.expected:
                    lines += [f"       Expected: {failure.expected}",
                              f"       Actual:   {failure.actual}"]
        header = (f"  {'LEVEL':<8} {'NAME':<15} {'TOTAL':>6} {'PASS':>6} {'FAIL':>6} "
                  f"{'ERR':>6} {'STATUS':>8}")
        lines += ["", "  Level Summary:", header]
        for level, s in self.by_level().items():
            lines.append(f"  {level:<8} {LEVEL_NAMES.get(level, 'Unknown'):<15} {s.total:>6} "
                         f"{s.passed:>6} {s.failed:>6} {s.errored:>6} "
                         f"{'PASS' if s.all_pass else 'FAIL':>8}")
        totals, reached = self.totals(), self.conformant_level
        verdict = (f"CONFORMANT (Level {reached})" if self.all_passed
                   else f"PARTIAL CONFORMANCE (Level {reached})" if reached >= 0
                   else "NOT CONFORMANT")
        counts = (f"  Total: {totals.total} | Passed: {totals.passed} | "
                  f"Failed: {totals.failed} | Errored: {totals.errored}")
        lines += ["", "  " + "-" * 40, counts, f"  Result: {verdict}", "=" * 40]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- loading


def parse_level(raw: Any) -> int:
    """A test's ``level``: an integer, or ``"ext"``/``"extension"`` (99)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("ext", "extension"):
            return EXT_LEVEL
        if text.lstrip("+-").isdigit():
            return int(text)
    raise ConformanceError(f"invalid level {raw!r}")


def _phase_steps(raw: Any, where: str) -> list[Step]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = raw.get("steps") or []
    if not isinstance(raw, list) or not all(isinstance(step, dict) for step in raw):
        raise ConformanceError(f"{where}: steps must be a list of objects")
    return raw


def _parse_case(path: Path) -> TestCase:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConformanceError(f"parsing {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConformanceError(f"parsing {path}: a test case must be a JSON object")
    text = {key: str(data.get(key) or "") for key in ("test_id", "category", "name", "spec_ref")}
    return TestCase(
        level=parse_level(data.get("level", 0)),
        file_path=str(path),
        steps=_phase_steps(data.get("steps"), str(path)),
        setup=_phase_steps(data.get("setup"), str(path)),
        teardown=_phase_steps(data.get("teardown"), str(path)),
        **text,
    )


def _walk_json(path: Path) -> Iterator[Path]:
    """``filepath.Walk`` order: lexical, files and directories interleaved, no symlinked dirs."""
    with os.scandir(path) as entries:
        ordered = sorted(entries, key=lambda entry: entry.name)
    for entry in ordered:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_json(Path(entry.path))
        elif entry.name.endswith(".json"):
            yield Path(entry.path)


def load_tests(suites_dir: str | os.PathLike[str]) -> list[TestCase]:
    """Every ``*.json`` test under ``suites_dir`` (or that one file), sorted by ``test_id``."""
    root = Path(suites_dir)
    try:
        if root.is_file():
            files: list[Path] = [root] if root.name.endswith(".json") else []
        elif root.is_dir():
            files = list(_walk_json(root))
        else:
            raise ConformanceError(f"suites directory {root} does not exist")
    except OSError as exc:
        raise ConformanceError(f"walking {root}: {exc}") from exc
    return sorted((_parse_case(path) for path in files), key=lambda case: case.test_id)


def filter_tests(
    tests: list[TestCase], level: int | None, category: str | None, test_id: str | None
) -> list[TestCase]:
    return [
        case
        for case in tests
        if (level is None or level < 0 or case.level == level)
        and (not category or case.category == category)
        and (not test_id or case.test_id == test_id)
    ]


# --------------------------------------------------------------------------- assertions


def _body_failures(step_id: str, body: dict[str, Any], sr: StepResult,
                   bodies: dict[str, dict[str, Any] | None]) -> list[Failure]:
    failures: list[Failure] = []
    alternatives = body.get("$or", 0)  # a non-array $or is ignored, null has no alternatives
    if (alternatives is None or isinstance(alternatives, list)) and not any(
        _or_alternative_matches(alt, sr.parsed, bodies) for alt in alternatives or []
    ):
        failures.append(Failure(step_id, "No $or alternative matched", field="$or"))
    if sr.parsed is None:
        return failures
    for path, matcher in body.items():
        if path.startswith("$") and not path.startswith("$."):
            continue
        resolved = resolve_matcher_templates(matcher, bodies)
        try:
            value = resolve_json_path(resolve_templates(path, bodies), sr.parsed)
        except PathError as exc:
            if resolved != "absent":
                message = f"Failed to resolve path {go_quote(path)}: {exc}"
                failures.append(Failure(step_id, message, field=path))
            continue
        if (error := match_assertion(resolved, value)) is not None:
            failures.append(Failure(
                step_id, f"Assertion failed at {go_quote(path)}: {error}", field=path,
                expected=json.dumps(resolved, default=repr), actual=go_json_marshal(value),
            ))
    return failures


def _or_alternative_matches(alternative: Any, parsed: dict[str, Any] | None,
                            bodies: dict[str, dict[str, Any] | None]) -> bool:
    if alternative is not None and not isinstance(alternative, dict):
        return False
    for path, matcher in (alternative or {}).items():
        try:
            value = resolve_json_path(path, parsed or {})
        except PathError:
            return False
        if match_assertion(resolve_matcher_templates(matcher, bodies), value) is not None:
            return False
    return True


def _timing_failures(step_id: str, timing: dict[str, Any], took: int,
                     tolerance_pct: float) -> list[Failure]:
    failures: list[Failure] = []
    less, greater, approx = (timing.get(k) for k in ("less_than", "greater_than", "approximate"))
    if isinstance(less, int) and took >= less:
        failures.append(Failure(step_id, f"Expected response in < {less}ms, took {took}ms",
                                field="timing", expected=f"< {less}ms", actual=f"{took}ms"))
    if isinstance(greater, int) and took <= greater:
        failures.append(Failure(step_id, f"Expected response in > {greater}ms, took {took}ms",
                                field="timing", expected=f"> {greater}ms", actual=f"{took}ms"))
    if isinstance(approx, int):
        tolerance = max(approx * tolerance_pct / 100.0, MIN_TIMING_TOLERANCE_MS)
        if abs(took - approx) > tolerance:
            message = (f"timing assertion failed: expected ~{approx}ms (tolerance: "
                       f"{tolerance:.0f}ms), got {took}ms (diff: {abs(took - approx)}ms)")
            failures.append(Failure(step_id, message, field="timing"))
    return failures


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def evaluate_assertions(step_id: str, assertions: dict[str, Any], sr: StepResult,
                        bodies: dict[str, dict[str, Any] | None],
                        tolerance_pct: float) -> list[Failure]:
    """All assertions of one step; unknown keys (``exclusive_claim``, ``expect``...) are ignored."""
    failures: list[Failure] = []
    actual_status = str(sr.status_code)
    error = match_status(assertions["status"], sr.status_code) if "status" in assertions else None
    if error is not None:
        failures.append(Failure(step_id, error, field="status", actual=actual_status,
                                expected=json.dumps(assertions["status"])))
    status_in = assertions.get("status_in")
    if isinstance(status_in, list) and status_in and sr.status_code not in status_in:
        message = f"Expected status in {go_sprint(status_in)}, got {sr.status_code}"
        failures.append(Failure(step_id, message, field="status", actual=actual_status))
    if isinstance(assertions.get("body"), dict):
        failures += _body_failures(step_id, assertions["body"], sr, bodies)
    for path in _list(assertions.get("body_absent")):
        try:
            present = resolve_json_path(path, sr.parsed or {}) is not None
        except PathError:
            present = False
        if present:
            failures.append(Failure(step_id, f"Expected field {go_quote(path)} to be absent",
                                    field=path))
    headers = assertions.get("headers")
    for name, expected in (headers.items() if isinstance(headers, dict) else ()):
        actual = sr.header(name)
        if match_header(expected, actual) is not None:
            message = (f"Expected header {go_quote(name)}={json.dumps(expected)}, "
                       f"got {go_quote(actual)}")
            failures.append(Failure(step_id, message, field=f"header:{name}", actual=actual))
    if isinstance(assertions.get("timing_ms"), dict):
        failures += _timing_failures(step_id, assertions["timing_ms"], sr.duration_ms,
                                     tolerance_pct)
    for needle in _list(assertions.get("body_contains")):
        if str(needle).encode() not in sr.body:
            failures.append(Failure(step_id, f"Response body does not contain {go_quote(needle)}",
                                    field="body_contains"))
    return failures


# --------------------------------------------------------------------------- execution


class StepExecutor:
    """Runs steps for one :func:`run_suites` call over one keep-alive connection pool."""

    def __init__(self, client: httpx.Client, base_url: str, tolerance_pct: float) -> None:
        self.client = client
        self.base_url = base_url
        self.tolerance_pct = tolerance_pct

    def execute_step(self, step: Step, results: dict[str, StepResult]
                     ) -> tuple[StepResult, list[Failure]]:
        step_id = str(step.get("id") or "")
        delay_ms = step.get("delay_ms")
        if isinstance(delay_ms, int) and delay_ms > 0:
            time.sleep(delay_ms / 1000)
        action = str(step.get("action") or "")
        if action.lower() == "wait":
            duration_ms = step.get("duration_ms")
            wait_ms = duration_ms if isinstance(duration_ms, int) and duration_ms > 0 else delay_ms
            if isinstance(wait_ms, int) and wait_ms > 0:
                time.sleep(wait_ms / 1000)
            return StepResult(step_id), []
        bodies = {key: result.parsed for key, result in results.items()}
        sr, failures = self._send(step_id, action or "GET", step, bodies)
        if not failures and isinstance(step.get("assertions"), dict):
            failures = evaluate_assertions(step_id, step["assertions"], sr, bodies,
                                           self.tolerance_pct)
        return sr, failures

    def _send(self, step_id: str, method: str, step: Step,
              bodies: dict[str, dict[str, Any] | None]) -> tuple[StepResult, list[Failure]]:
        url = self.base_url + resolve_templates(str(step.get("path") or ""), bodies)
        content = None
        if "body" in step:
            text = json.dumps(step["body"], ensure_ascii=False)
            content = resolve_templates(text, bodies).encode("utf-8")
        headers: dict[str, tuple[str, str]] = {}  # like http.Header.Set: the last one wins
        given = step.get("headers")
        for name, value in (given.items() if isinstance(given, dict) else ()):
            headers[str(name).lower()] = (str(name), str(value))
        if content is not None and not headers.get("content-type", ("", ""))[1]:
            headers["content-type"] = ("Content-Type", OJS_MEDIA_TYPE)
        try:
            request = self.client.build_request(method, url, headers=list(headers.values()),
                                                content=content)
            request.method = method  # Go sends the method verbatim; httpx upper-cases it
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            return StepResult(step_id), [Failure(step_id, f"Failed to create request: {exc}")]
        started = time.perf_counter()
        try:
            response = self.client.send(request, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            return StepResult(step_id), [Failure(step_id, f"HTTP request failed: {exc!r}")]
        duration_ms = int((time.perf_counter() - started) * 1000)
        try:
            raw = response.read()
        except httpx.HTTPError as exc:
            return StepResult(step_id), [Failure(step_id, f"Failed to read response body: {exc}")]
        finally:
            response.close()
        return StepResult(step_id, response.status_code, response.headers, raw, duration_ms,
                          parse_body(raw)), []

    def run_phase(self, steps: list[Step], results: dict[str, StepResult]
                  ) -> Iterator[tuple[StepResult, list[Failure]]]:
        """Execute steps in order; a ``parallel_with`` group runs concurrently, in threads."""
        done: set[int] = set()
        for index in range(len(steps)):
            if index in done:
                continue
            group = _parallel_group(steps, index, done)
            done.update(group)
            if len(group) == 1:
                outcomes = [self.execute_step(steps[index], results)]
            else:
                snapshot = dict(results)
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    futures = [pool.submit(self.execute_step, steps[i], snapshot) for i in group]
                    outcomes = [future.result() for future in futures]
            for position, (sr, failures) in zip(group, outcomes, strict=True):
                results[str(steps[position].get("id") or "")] = sr
                yield sr, failures


def _partners(step: Step) -> set[str]:
    linked = step.get("parallel_with")
    if isinstance(linked, str):
        return {linked}
    return {str(item) for item in linked} if isinstance(linked, list) else set()


def _parallel_group(steps: list[Step], start: int, done: set[int]) -> list[int]:
    """``start`` plus every later, not yet run step linked to it by ``parallel_with``."""
    group = {start}
    changed = True
    while changed:
        changed = False
        ids = {str(steps[i].get("id") or "") for i in group}
        wanted = set().union(*(_partners(steps[i]) for i in group))
        for index in range(start + 1, len(steps)):
            if index in group or index in done:
                continue
            step_id = str(steps[index].get("id") or "")
            if step_id in wanted or _partners(steps[index]) & ids:
                group.add(index)
                changed = True
    return sorted(group)


def run_test(case: TestCase, executor: StepExecutor) -> TestResult:
    """Setup (the first failure aborts with status ``error``), steps, then teardown."""
    started = time.perf_counter()
    result = TestResult(case.test_id, case.name, case.level, case.category, case.spec_ref,
                        case.file_path)
    results: dict[str, StepResult] = {}
    for sr, failures in executor.run_phase(case.setup, results):
        if failures:
            result.failures.append(Failure(sr.step_id,
                                           f"Setup step failed: {failures[0].message}"))
            result.status = "error"
            result.duration_ms = int((time.perf_counter() - started) * 1000)
            return result
    for sr, failures in executor.run_phase(case.steps, results):
        result.step_results.append(sr)
        result.failures.extend(failures)
    for _ in executor.run_phase(case.teardown, results):
        pass
    result.duration_ms = int((time.perf_counter() - started) * 1000)
    result.status = "fail" if result.failures else "pass"
    return result


def _reset_state(client: httpx.Client, store: redis.Redis | None, reset_url: str | None,
                 reset: Callable[[], object] | None = None) -> None:
    if reset is not None:
        reset()
    if store is not None:
        try:
            store.flushdb()
        except (redis.RedisError, OSError) as exc:
            logger.debug("FLUSHDB failed (ignored): %s", exc)
    if reset_url:
        try:
            client.post(reset_url).close()
        except httpx.HTTPError as exc:
            logger.debug("reset POST %s failed (ignored): %s", reset_url, exc)


def _redis_client(url: str) -> redis.Redis:
    try:
        return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    except ValueError as exc:
        raise ConformanceError(f"invalid Redis URL {url!r}: {exc}") from exc


def run_suites(
    base_url: str,
    suites_dir: str | os.PathLike[str],
    *,
    redis_url: str | None = None,
    reset_url: str | None = None,
    reset: Callable[[], object] | None = None,
    level: int | str | None = None,
    test_id: str | None = None,
    category: str | None = None,
    tolerance_pct: float = 50,
    timeout_s: float = 30,
) -> Report:
    """Load, filter and run the suites one test at a time, resetting state before each test.

    `reset`, when given, runs first at each reset (a namespace on a Redis Cluster has no
    database of its own to flush). Raises :class:`ConformanceError` if the suites cannot be loaded
    or no test matches.
    """
    wanted_level = parse_level(level) if level is not None else None
    tests = filter_tests(load_tests(suites_dir), wanted_level, category, test_id)
    if not tests:
        raise ConformanceError(f"no tests in {suites_dir} match the specified filters")
    target = base_url.rstrip("/")
    started = time.perf_counter()
    store = _redis_client(redis_url) if redis_url else None
    headers = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
    results: list[TestResult] = []
    try:
        with httpx.Client(timeout=timeout_s, headers=headers, max_redirects=10) as client:
            del client.headers["Accept"]
            executor = StepExecutor(client, target, tolerance_pct)
            for case in tests:
                _reset_state(client, store, reset_url, reset)
                logger.debug("running %s (%s)", case.test_id, case.file_path)
                results.append(run_test(case, executor))
    finally:
        if store is not None:
            store.close()
    return Report(
        target=target,
        results=results,
        duration_ms=int((time.perf_counter() - started) * 1000),
        requested_level=-1 if wanted_level is None else wanted_level,
        run_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
