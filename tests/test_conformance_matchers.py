"""Unit tests of the conformance runner's matcher, path and template semantics (no server)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conformance.matchers import (
    InvalidMatcher,
    PathError,
    go_format_float,
    go_json_marshal,
    go_sprint,
    match_assertion,
    match_header,
    match_status,
    parse_body,
    resolve_json_path,
    resolve_matcher_templates,
    resolve_templates,
)
from tests.conformance.runner import (
    ConformanceError,
    StepResult,
    evaluate_assertions,
    parse_level,
)

UUID7 = "01936f0e-8a3b-7c2d-9e4f-0123456789ab"
MEDIA = "application/openjobspec+json"
DOC: dict[str, Any] = {
    "job": {"id": "job-1", "count": 7.0, "ratio": 2.5, "big": 1e6, "error": None,
            "meta": {"b": 1.0, "a": "x"}, "tags": ["a", "b"]},
    "jobs": [{"id": "a", "state": "available", "n": 1.0},
             {"id": "b", "state": "active", "n": 2.0},
             {"id": "c", "state": "active", "n": 3.0}],
    "empty": [],
}


def ok(matcher: Any, actual: Any) -> bool:
    return match_assertion(matcher, actual) is None


# --------------------------------------------------------------------------- Go formatting


@pytest.mark.parametrize(("value", "text"), [
    (42.0, "42"), (2.5, "2.5"), (1e6, "1e+06"), (123456.0, "123456"), (1234567.5, "1.2345675e+06"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-3.0, "-3"), (None, "<nil>"), (True, "true"),
    ({"b": [1.0, "x"], "a": None}, "map[a:<nil> b:[1 x]]"), ("s", "s"),
])
def test_go_sprint_mimics_percent_v(value: Any, text: str) -> None:
    assert go_sprint(value) == text


def test_go_json_marshal_sorts_keys_and_formats_numbers_like_go() -> None:
    value = {"b": [1.0, 2.5, None, True], "a": "<&>", "c": 1e21, "d": 1e-7}
    assert go_json_marshal(value) == (
        '{"a":"\\u003c\\u0026\\u003e","b":[1,2.5,null,true],"c":1e+21,"d":1e-7}'
    )
    assert go_format_float(float("inf")) == "+Inf"


# --------------------------------------------------------------------------- response bodies


@pytest.mark.parametrize(("raw", "parsed"), [
    (b'{"a": 1, "b": [2]}', {"a": 1.0, "b": [2.0]}),
    (b"[1, 2]", None), (b"not json", None), (b"null", None), (b"", None),
    (b'{"a": NaN}', None), (b'"text"', None),
])
def test_parse_body_accepts_only_json_objects(raw: bytes, parsed: Any) -> None:
    assert parse_body(raw) == parsed


def test_parse_body_decodes_every_number_as_float() -> None:
    body = parse_body(b'{"n": 3}')
    assert body is not None and isinstance(body["n"], float)


# --------------------------------------------------------------------------- JSON paths


@pytest.mark.parametrize(("path", "value"), [
    ("$.job.id", "job-1"), ("job.id", "job-1"), ("$.job.missing", None),
    ("$.missing.deeper.still", None), ("$.job.error", None), ("$.jobs[1].id", "b"),
    ("$.jobs[*].id", ["a", "b", "c"]), ("$.empty[*]", []), ("$.empty[*].id", []),
    ("$.jobs[?(@.state=='active')].id", "b"), ('$.jobs[?(@.state=="active")]', DOC["jobs"][1]),
    ("$.jobs[?(@.n==3)].id", "c"), ("$.jobs[?(@.state=='nope')]", None),
    ("$.job.tags[-0]", "a"),
])
def test_resolve_json_path(path: str, value: Any) -> None:
    assert resolve_json_path(path, DOC) == value


@pytest.mark.parametrize("path", [
    "$.jobs[3]", "$.jobs[-1]", "$.job.id[0]", "$.job.id.deeper", "$.job.error.code",
    "$.missing[0]", "$.jobs[x]", "$.jobs[?(@.state=='nope')].id", "$.job.id[*]",
])
def test_resolve_json_path_errors(path: str) -> None:
    with pytest.raises(PathError):
        resolve_json_path(path, DOC)


# --------------------------------------------------------------------------- templates


def test_templates_insert_strings_raw_ints_plain_and_objects_as_json() -> None:
    bodies = {"s1": DOC}
    ref = "{{steps.s1.response.body.%s}}"
    text = (f'{{"id": "{ref % "job.id"}", "n": {ref % "job.count"}, "r": "{ref % "job.ratio"}", '
            f'"big": "{ref % "job.big"}", "m": {ref % "job.meta"}, '
            f'"first": "{ref % "jobs[0].id"}"}}')
    assert resolve_templates(text, bodies) == (
        '{"id": "job-1", "n": 7, "r": "2.5", "big": "1000000", "m": {"a":"x","b":1}, "first": "a"}'
    )


@pytest.mark.parametrize("template", [
    "{{steps.nope.response.body.job.id}}",      # unknown step
    "{{steps.s1.response.body.job.missing}}",   # missing field
    "{{steps.s1.response.body.job.error}}",     # JSON null
    "{{steps.s1.response.body.jobs[9].id}}",    # path error
    "{{steps.s2.response.body.job.id}}",        # step whose body was not a JSON object
    "{{job_id}}", "${job_id}", "{{steps.s1.response.status}}",
])
def test_unresolvable_templates_stay_verbatim(template: str) -> None:
    assert resolve_templates(f"/x/{template}", {"s1": DOC, "s2": None}) == f"/x/{template}"


def test_matcher_templates_are_resolved_and_may_break_the_matcher() -> None:
    bodies = {"s1": {"id": "a", "quoted": 'say "hi"', "n": 5.0}}
    assert resolve_matcher_templates("{{steps.s1.response.body.id}}", bodies) == "a"
    assert resolve_matcher_templates({"$in": ["{{steps.s1.response.body.n}}"]}, bodies) == {
        "$in": ["5"]
    }
    broken = resolve_matcher_templates("{{steps.s1.response.body.quoted}}", bodies)
    assert isinstance(broken, InvalidMatcher)
    assert "unknown matcher format" in (match_assertion(broken, "x") or "")
    assert resolve_matcher_templates("plain", bodies) == "plain"


# --------------------------------------------------------------------------- value matchers


def test_any_exists_absent_and_exists_operator() -> None:
    assert ok("any", None) and ok("any", 0)
    assert not ok("exists", None)
    assert ok("exists", 0) and ok("exists", "") and ok("exists", False)
    assert ok("absent", None) and not ok("absent", 0) and not ok("absent", [])
    assert ok({"$exists": False}, None) and not ok({"$exists": False}, "x")
    assert ok({"$exists": True}, "x") and not ok({"$exists": True}, None)
    assert ok({"$exists": True, "$type": "string"}, "x")
    assert not ok({"$exists": True, "$type": "number"}, "x")
    assert ok({"$exists": True, "$type": "array"}, [])
    assert ok({"$exists": False, "$type": "null"}, None)


def test_unsupported_type_and_gte_operators_fall_back_to_object_comparison() -> None:
    assert not ok({"$type": "string"}, "x")
    assert not ok({"$type": "number"}, 3.0)
    assert not ok({"$gte": 1}, 5.0)
    assert ok({"$gte": 1}, {"$gte": 1.0})  # exact object comparison is all that is left


def test_literals_numbers_booleans_and_null() -> None:
    assert ok("available", "available") and not ok("available", "active")
    assert not ok("42", 42.0)
    assert ok(42, 42.0) and not ok(42, "42") and not ok(42, 43.0)
    assert ok(0.3, 0.1 + 0.2) and not ok(0.3, 0.31)
    assert ok(True, True) and not ok(True, 1.0) and not ok(False, None)
    assert ok(None, None) and not ok(None, 0.0)


def test_approximate_matcher_is_half_of_n_without_floor() -> None:
    assert ok("~1000", 500.0) and ok("~1000", 1500.0)
    assert not ok("~1000", 499.0) and not ok("~1000", 1501.0)
    assert ok("~100", 50.0) and not ok("~100", 49.0)  # no 100 ms floor here
    assert not ok("~100", "100")


@pytest.mark.parametrize(("matcher", "good", "bad"), [
    ("string:nonempty", "x", ""), ("string:non_empty", "x", 1.0),
    ("string:uuid", "0c6f1a3e-2b4d-4e5f-8a9b-0123456789ab", "0C6F1A3E-2B4D-4E5F-8A9B-0123456789AB"),
    ("string:uuidv7", UUID7, "0c6f1a3e-2b4d-4e5f-8a9b-0123456789ab"),
    ("string:uuidv7", UUID7, UUID7 + "\n"),
    ("string:datetime", "2024-01-15T10:30:00Z", "2024-01-15 10:30:00Z"),
    ("string:datetime", "2024-01-15T10:30:00.123+09:00", "2024-01-15T10:30:00"),
    ("string:contains:not found", "job not found", "Not Found"),
    ("string:pattern(^test\\..*)", "test.echo", "xtest.echo"),
    ("string:pattern(echo)", "test.echo.x", "ECHO"),
    ("number:positive", 0.5, 0.0), ("number:non_negative", 0.0, -1.0),
    ("number:range(400,422)", 400.0, 423.0), ("number:range(400, 422)", 422.0, 399.0),
    ("array:nonempty", [1.0], []), ("array:empty", [], [None]),
    ("array:length:2", [1.0, 2.0], [1.0]), ("array:length(1)", ["x"], []),
    ("array:min_length:2", [1.0, 2.0, 3.0], [1.0]), ("array:min:1", ["x"], []),
    ("contains:42", [42.0, "x"], [42.5]), ("contains:true", [True], ["True"]),
    ("contains:<nil>", [None], []), ("contains:map[a:1]", [{"a": 1.0}], [{"a": 2.0}]),
    ("contains:1e+06", [1e6], [1000000.5]),
    ("not_contains:deleted", ["a"], ["deleted"]), ("not_contains:x", [], "x"),
    ("array:empty", [], None),
])
def test_string_matchers(matcher: str, good: Any, bad: Any) -> None:
    assert ok(matcher, good)
    assert not ok(matcher, bad)


def test_positional_array_matcher_needs_exact_length() -> None:
    assert ok([], []) and not ok([], [1.0]) and not ok([], None)
    assert ok(["string:nonempty", 1], ["x", 1.0])
    assert not ok(["string:nonempty", 1], ["x", 1.0, 2.0])
    assert not ok(["string:nonempty", 1], ["", 1.0])


def test_object_operators() -> None:
    assert ok({"$in": ["available", "active"]}, "active") and not ok({"$in": [200, 201]}, 202.0)
    assert ok({"$in": ["string:uuidv7", None]}, None)
    assert ok({"$or": ["string:nonempty", {"$exists": False}]}, None)
    assert not ok({"$or": ["a", "b"]}, "c")
    assert ok({"$size": 2}, [1.0, 2.0]) and not ok({"$size": 2}, [1.0])
    assert ok({"$size": {"$gte": 1}}, [1.0]) and not ok({"$size": {"$gte": 2}}, [1.0])
    assert not ok({"$size": 1}, "x") and not ok({"$size": "1"}, ["x"])
    assert ok({"$empty": True}, {"a": 1.0}) and ok({"$empty": True}, None)
    assert ok({"range": {"min": 0, "max": 100}}, 100.0) and not ok({"range": {"min": 0}}, -1.0)
    assert ok({"range": {"max": 5}}, -10.0) and not ok({"range": {"max": 5}}, 5.5)
    assert not ok({"range": {}}, "5")
    assert ok({"$match": "^Validation"}, "ValidationError") and ok({"$match": "err"}, "an error")
    assert not ok({"$match": "^x$"}, "x\n") and not ok({"$match": "x"}, 1.0)


def test_nested_object_matcher() -> None:
    actual = {"code": "not_found", "retryable": False, "details": None}
    assert ok({"code": "not_found", "retryable": False}, actual)
    assert ok({"gone": "absent"}, actual)
    assert not ok({"details": "absent"}, actual)  # key present (null) counts as present here
    assert not ok({"missing": "any"}, actual)
    assert not ok({"code": "other"}, actual) and not ok({"code": "x"}, "not an object")


# --------------------------------------------------------------------------- status, headers


@pytest.mark.parametrize(("expected", "good", "bad"), [
    (201, 201, 200), ("number:range(400,422)", 422, 423), ("one_of:200,201,409", 409, 400),
    ({"$in": [200, 409]}, 200, 201), (None, 0, 200),
])
def test_status_matchers(expected: Any, good: int, bad: int) -> None:
    assert match_status(expected, good) is None
    assert match_status(expected, bad) is not None


@pytest.mark.parametrize("expected", [[200, 201], 201.0, True, {"$in": [200.0]}, {"$nin": [1]}])
def test_unsupported_status_formats_always_fail(expected: Any) -> None:
    assert match_status(expected, 200) is not None
    assert match_status(expected, 201) is not None


def test_header_matchers() -> None:
    media = "application/openjobspec+json"
    assert match_header(media, media) is None
    assert match_header(media, media + "; charset=utf-8") is not None
    assert match_header({"$match": "application/(openjobspec\\+)?json"}, "application/json") is None
    assert match_header({"$match": "^text/plain$"}, "text/html") is not None
    assert match_header({"$eq": "req-1"}, "req-1") is None
    assert match_header({"$eq": "req-1"}, "req-2") is not None
    assert match_header({"$exists": True}, "") is None


# --------------------------------------------------------------------------- step assertions


def step_result(body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                duration_ms: int = 10) -> StepResult:
    return StepResult("s", status, httpx.Headers(headers or {}), body, duration_ms,
                      parse_body(body))


def failures(assertions: dict[str, Any], sr: StepResult, tolerance: float = 50) -> list[str]:
    return [f.message for f in evaluate_assertions("s", assertions, sr, {"s0": DOC}, tolerance)]


def test_top_level_array_body_skips_path_assertions_but_or_fails() -> None:
    sr = step_result(b'[{"id": "x"}]')
    assert failures({"status": 200, "body": {"$.id": "nope", "$.jobs": "array:nonempty"}}, sr) == []
    assert failures({"body": {"$or": [{"$.jobs": []}, {"$.jobs[0].state": "available"}]}},
                    sr) == ["No $or alternative matched"]
    assert failures({"body": {"$or": [{"$.jobs": "absent"}]}}, sr) == []
    assert failures({"body_absent": ["$.id", "$.jobs[0]"]}, sr) == []


def test_top_level_or_on_object_body() -> None:
    alternatives = {"$or": [{"$.jobs": []}, {"$.jobs[0].state": "available"}]}
    assert failures({"body": alternatives}, step_result(b'{"jobs": []}')) == []
    available = step_result(b'{"jobs": [{"state": "available"}]}')
    assert failures({"body": alternatives}, available) == []
    assert failures({"body": alternatives}, step_result(b'{"jobs": [{"state": "active"}]}'))
    assert failures({"body": alternatives}, step_result(b""))  # a 204-style empty body fails


def test_body_path_errors_fail_unless_absent() -> None:
    sr = step_result(b'{"jobs": [], "job": {"error": null}}')
    assert failures({"body": {"$.jobs[0].id": "absent", "$.job.error.code": "absent"}}, sr) == []
    messages = failures({"body": {"$.jobs[0].id": "any"}}, sr)
    assert len(messages) == 1 and messages[0].startswith('Failed to resolve path "$.jobs[0].id"')
    assert failures({"body": {"$": {"$empty": True}, "$.job.error": None}}, sr) == []


def test_body_assertions_resolve_templates_in_paths_and_matchers() -> None:
    sr = step_result(b'{"job": {"id": "job-1"}, "job-1": true}')
    assertions = {"body": {"$.job.id": "{{steps.s0.response.body.job.id}}",
                           "$.{{steps.s0.response.body.job.id}}": True}}
    assert failures(assertions, sr) == []
    assert failures({"body": {"$.job.id": "{{steps.s0.response.body.jobs[1].id}}"}}, sr)


def test_status_in_body_absent_and_body_contains() -> None:
    sr = step_result(b'{"state":"completed","result":null}', status=201)
    assert failures({"status_in": [200, 201]}, sr) == []
    assert failures({"status_in": [200, 204]}, sr) == ["Expected status in [200 204], got 201"]
    assert failures({"body_absent": ["$.error", "$.result"]}, sr) == []
    assert failures({"body_absent": ["$.state"]}, sr)
    assert failures({"body_contains": ['"state":"completed"']}, sr) == []
    assert failures({"body_contains": ['"state": "completed"']}, sr)


def test_header_assertions_use_case_insensitive_names_and_first_value() -> None:
    sr = step_result(b"{}", headers={"content-type": "application/openjobspec+json",
                                     "x-request-id": "abc"})
    assert failures({"headers": {"Content-Type": "application/openjobspec+json",
                                 "X-REQUEST-ID": {"$eq": "abc"},
                                 "Retry-After": {"$exists": True}}}, sr) == []
    assert failures({"headers": {"Retry-After": "1"}}, sr)
    charset = step_result(b"{}", headers={"Content-Type": f"{MEDIA}; charset=utf-8"})
    assert failures({"headers": {"Content-Type": "application/openjobspec+json"}}, charset)


def test_timing_assertions() -> None:
    assert failures({"timing_ms": {"approximate": 50}}, step_result(b"", duration_ms=150)) == []
    assert failures({"timing_ms": {"approximate": 50}}, step_result(b"", duration_ms=151))
    slow = step_result(b"", duration_ms=1400)
    assert failures({"timing_ms": {"approximate": 1000}}, slow, tolerance=50) == []
    assert failures({"timing_ms": {"approximate": 1000}}, slow, tolerance=30)
    assert failures({"timing_ms": {"less_than": 1400}}, slow)
    assert failures({"timing_ms": {"greater_than": 1400}}, slow)
    assert failures({"timing_ms": {"less_than": 1401, "greater_than": 1399}}, slow) == []


def test_unknown_assertion_keys_are_ignored() -> None:
    sr = step_result(b"{}", status=400)
    assert failures({"exclusive_claim": {"exactly_one_has_job": True}, "expect": {"status": 1},
                     "status_one_of": [1], "body_raw": "x"}, sr) == []


# --------------------------------------------------------------------------- levels


def test_parse_level() -> None:
    assert parse_level(0) == 0 and parse_level(4) == 4 and parse_level("2") == 2
    assert parse_level("ext") == 99 and parse_level("extension") == 99
    with pytest.raises(ConformanceError):
        parse_level("HIGH")
    with pytest.raises(ConformanceError):
        parse_level(True)
