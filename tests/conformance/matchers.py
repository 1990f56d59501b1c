"""JSON path resolution, templates and matchers of the official OJS conformance runner.

A port of ``lib/assertions.go`` and the matcher parts of ``runner/http/runner.go`` of
openjobspec/ojs-conformance, quirks included. Matchers come from test files (``json.loads``
defaults: integer literals stay ``int``); response bodies are decoded like Go's ``any``, so every
number is a ``float`` (see :func:`parse_body`). Matchers return ``None`` on success or an error
message, like the Go functions return ``nil`` or an ``error``.
"""

from __future__ import annotations

import decimal
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEMPLATE_RE = re.compile(r"\{\{steps\.([^.]+)\.response\.body\.([^}]+)\}\}")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
UUIDV7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z", re.ASCII
)
_RANGE_RE = re.compile(r"^number:range\((-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\)\Z", re.ASCII)
_LENGTH_RE = re.compile(r"^array:length\((\d+)\)\Z", re.ASCII)
_APPROX_RE = re.compile(r"^~(\d+(?:\.\d+)?)\Z", re.ASCII)
_ATOI_RE = re.compile(r"[+-]?[0-9]+\Z")
# The body "~N" matcher uses the library constant, not the -tolerance flag.
APPROX_TOLERANCE_PCT = 50.0


class PathError(Exception):
    """A JSON path could not be resolved (Go: ``ResolveJSONPath`` returned an error)."""


@dataclass(frozen=True)
class InvalidMatcher:
    """A matcher whose JSON text became invalid after template substitution."""

    raw: str


# --------------------------------------------------------------------------- Go formatting


def go_type(value: Any) -> str:
    """Go's ``%T`` of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "[]interface {}" if isinstance(value, list) else type(value).__name__


def _digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``abs(value)`` and the decimal point position."""
    _, digit_tuple, exponent = decimal.Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    return digits, len("".join(map(str, digit_tuple))) + exponent


def _exp_form(digits: str, point: int, min_exp_digits: int = 2) -> str:
    exp = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):0{min_exp_digits}d}"


def _plain_form(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def go_format_float(value: float) -> str:
    """Go's ``%v`` of a float64 (``strconv.FormatFloat(v, 'g', -1, 64)``): 1e+06, 42, 0.5."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, point = _digits(value)
    exp = point - 1
    body = _exp_form(digits, point) if exp < -4 or exp >= 6 else _plain_form(digits, point)
    return sign + body


def go_sprint(value: Any) -> str:
    """Go's ``%v`` of a decoded JSON value: ``<nil>``, ``map[a:1 b:x]``, ``[1 2]``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_format_float(float(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_sprint(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_sprint(item) for item in value) + "]"
    return str(value)


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_json_string(text: str) -> str:
    out = []
    for char in text:
        escaped = _JSON_ESCAPES.get(char)
        if escaped is None and ord(char) < 0x20:
            escaped = f"\\u{ord(char):04x}"
        out.append(escaped or char)
    return '"' + "".join(out) + '"'


def _go_json_float(value: float) -> str:
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, point = _digits(value)
    sign = "-" if value < 0 else ""
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = _exp_form(digits, point)
        return sign + re.sub(r"e-0(\d)\Z", r"e-\1", text)
    return sign + _plain_form(digits, point)


def go_json_marshal(value: Any) -> str:
    """Go's ``json.Marshal`` of a decoded JSON value (sorted keys, HTML escaping)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _go_json_float(float(value))
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, dict):
        items = (f"{_go_json_string(k)}:{go_json_marshal(value[k])}" for k in sorted(value))
        return "{" + ",".join(items) + "}"
    return "[" + ",".join(go_json_marshal(item) for item in value) + "]"


def go_quote(text: str) -> str:
    """Close enough to Go's ``%q``."""
    return json.dumps(text, ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def go_regex(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern for unanchored search: ASCII classes, ``$``/``\\z`` = end of text."""
    multiline = re.search(r"\(\?[a-zA-Z]*m", pattern) is not None
    out, in_class, i = [], False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            out.append("\\Z" if pair == "\\z" else pair)
            i += 2
            continue
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        out.append("\\Z" if char == "$" and not in_class and not multiline else char)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _regex_search(pattern: str, text: str) -> str | None:
    try:
        regex = go_regex(pattern)
    except re.error as exc:
        return f"invalid regex pattern {go_quote(pattern)}: {exc}"
    if regex.search(text) is None:
        return f"expected string matching pattern {go_quote(pattern)}, got {go_quote(text)}"
    return None


# --------------------------------------------------------------------------- bodies, paths


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def parse_body(raw: bytes) -> dict[str, Any] | None:
    """Go's ``json.Unmarshal(body, &map[string]any)``: an object, or ``None`` for anything else."""
    if not raw:
        return None
    try:
        value = json.loads(
            raw.decode("utf-8", errors="replace"),
            parse_int=float,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def split_json_path(path: str) -> list[str]:
    """Split on dots outside brackets; empty segments are kept, a trailing one is dropped."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in path:
        if char == "." and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += 1 if char == "[" else -1 if char == "]" else 0
        current.append(char)
    if current:
        parts.append("".join(current))
    return parts


def _resolve_filter(part: str, rest: str, current: Any) -> tuple[Any, str]:
    close = rest.find(")]")
    if close < 0:
        raise PathError(f"unclosed filter expression in path {go_quote(part)}")
    expr, rest = rest[5:close], rest[close + 2 :]
    eq = expr.find("==")
    if eq < 0:
        raise PathError(f"unsupported filter expression in path {go_quote(part)}")
    key, wanted = expr[:eq], expr[eq + 2 :].strip("'\"")
    if not isinstance(current, list):
        raise PathError(f"expected array for filter at {go_quote(part)}, got {go_type(current)}")
    for item in current:
        if isinstance(item, dict) and key in item and go_sprint(item[key]) == wanted:
            return item, rest
    return None, rest


def _resolve_indices(part: str, rest: str, current: Any, later: list[str]) -> tuple[Any, bool]:
    """Apply ``[n][m]`` / ``[*]``; the flag says a wildcard already consumed the path."""
    while rest:
        if not rest.startswith("["):
            raise PathError(f"unexpected characters in path {go_quote(part)} at {go_quote(rest)}")
        close = rest.find("]")
        if close < 0:
            raise PathError(f"unclosed bracket in path {go_quote(part)}")
        index, rest = rest[1:close], rest[close + 1 :]
        if index == "*":
            if not isinstance(current, list):
                raise PathError(
                    f"expected array at {go_quote(part)} for wildcard, got {go_type(current)}"
                )
            remaining = ".".join(([rest] if rest else []) + later).removeprefix(".")
            return _wildcard(current, remaining), True
        if not _ATOI_RE.match(index):
            raise PathError(f"invalid array index in path {go_quote(part)}: {go_quote(index)}")
        if not isinstance(current, list):
            raise PathError(f"expected array at {go_quote(part)}, got {go_type(current)}")
        position = int(index)
        if position < 0 or position >= len(current):
            raise PathError(
                f"array index {position} out of bounds (length {len(current)}) at {go_quote(part)}"
            )
        current = current[position]
    return current, False


def _wildcard(items: list[Any], remaining: str) -> list[Any]:
    if not remaining:
        return list(items)
    results = []
    for item in items:
        try:
            value = resolve_json_path(remaining, item)
        except PathError:
            continue
        if value is not None:
            results.append(value)
    return results


def resolve_json_path(path: str, data: Any) -> Any:
    """Go's ``lib.ResolveJSONPath``: a missing key gives ``None``; a type clash raises."""
    parts = split_json_path(path.removeprefix("$."))
    current = data
    for i, part in enumerate(parts):
        if not part:
            continue
        bracket = part.find("[")
        if bracket < 0:
            if not isinstance(current, dict):
                raise PathError(f"expected object at {go_quote(part)}, got {go_type(current)}")
            if part not in current:
                return None
            current = current[part]
            continue
        field, rest = part[:bracket], part[bracket:]
        if field:
            if not isinstance(current, dict):
                raise PathError(f"expected object at {go_quote(field)}, got {go_type(current)}")
            current = current.get(field)
        if rest.startswith("[?(@."):
            current, rest = _resolve_filter(part, rest, current)
            if rest.startswith(".") and current is not None:
                return resolve_json_path(rest[1:], current)
            continue
        current, consumed = _resolve_indices(part, rest, current, parts[i + 1 :])
        if consumed:
            return current
    return current


# --------------------------------------------------------------------------- templates


def _template_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        if number.is_integer() and -(2**63) <= number < 2**63:
            return str(int(number))
        return go_format_float(number)
    return go_json_marshal(value)


def resolve_templates(text: str, bodies: Mapping[str, dict[str, Any] | None]) -> str:
    """Replace ``{{steps.<id>.response.body.<path>}}``; anything unresolved stays verbatim."""

    def replace(match: re.Match[str]) -> str:
        parsed = bodies.get(match.group(1))
        if parsed is None:
            return match.group(0)
        try:
            value = resolve_json_path(match.group(2), parsed)
        except PathError:
            return match.group(0)
        return match.group(0) if value is None else _template_text(value)

    return TEMPLATE_RE.sub(replace, text)


def resolve_matcher_templates(matcher: Any, bodies: Mapping[str, dict[str, Any] | None]) -> Any:
    """Substitute templates in a matcher's JSON text, then decode it again."""
    raw = json.dumps(matcher, ensure_ascii=False)
    if "{{steps." not in raw:
        return matcher
    resolved = resolve_templates(raw, bodies)
    if resolved == raw:
        return matcher
    try:
        return json.loads(resolved, parse_constant=_reject_constant)
    except ValueError:
        return InvalidMatcher(resolved)


# --------------------------------------------------------------------------- matchers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _is_int_literal(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _got(actual: Any) -> str:
    return f"{go_type(actual)}: {go_sprint(actual)}"


def match_assertion(matcher: Any, actual: Any) -> str | None:
    """Go's ``lib.MatchAssertion``: ``None`` when ``actual`` satisfies ``matcher``."""
    if isinstance(matcher, InvalidMatcher):
        return f"unknown matcher format: {matcher.raw}"
    if matcher is None:
        return None if actual is None else f"expected null, got {_got(actual)}"
    if isinstance(matcher, str):
        return _match_string(matcher, actual)
    if isinstance(matcher, bool):
        if not isinstance(actual, bool):
            return f"expected boolean {go_sprint(matcher)}, got {_got(actual)}"
        if actual != matcher:
            return f"expected {go_sprint(matcher)}, got {go_sprint(actual)}"
        return None
    if isinstance(matcher, (int, float)):
        try:
            expected = float(matcher)
        except OverflowError:
            expected = math.inf
        if math.isfinite(expected):
            return _match_number(expected, actual)
    if isinstance(matcher, list):
        return _match_array(matcher, actual)
    if isinstance(matcher, dict):
        return _match_object(matcher, actual)
    return f"unknown matcher format: {json.dumps(matcher)}"


def _match_number(expected: float, actual: Any) -> str | None:
    number = _number(actual)
    if number is None:
        return f"expected number {go_format_float(expected)}, got {_got(actual)}"
    if expected.is_integer() and number.is_integer():
        equal = int(expected) == int(number)
    else:
        equal = abs(expected - number) <= 1e-9
    if equal:
        return None
    return f"expected {go_format_float(expected)}, got {go_format_float(number)}"


def _array_count(matcher: str, prefix: str, actual: Any, at_least: bool) -> str | None:
    text = matcher[len(prefix) :]
    if not _ATOI_RE.match(text):
        return f"invalid {prefix.rstrip(':')} value {go_quote(text)}"
    wanted = int(text)
    if not isinstance(actual, list):
        relation = ">=" if at_least else "=="
        return f"expected array with length {relation} {wanted}, got {_got(actual)}"
    ok = len(actual) >= wanted if at_least else len(actual) == wanted
    return None if ok else f"expected array length {wanted}, got length {len(actual)}"


def _contains(matcher: str, actual: Any, negate: bool) -> str | None:
    target = matcher.split(":", 1)[1]
    if not isinstance(actual, list):
        return f"expected array for {'not_' if negate else ''}contains check, got {_got(actual)}"
    found = any(go_sprint(item) == target for item in actual)
    if found == negate:
        verb = "not contain" if negate else "contain"
        return f"expected array to {verb} {go_quote(target)}"
    return None


def _match_fixed(matcher: str, actual: Any) -> str | None:
    number = _number(actual)
    text = actual if isinstance(actual, str) else None
    checks: dict[str, tuple[bool, str]] = {
        "exists": (actual is not None, "expected field to exist, but it is missing"),
        "absent": (actual is None, f"expected field to be absent, but got {_got(actual)}"),
        "string:nonempty": (bool(text), f"expected non-empty string, got {_got(actual)}"),
        "string:uuid": (text is not None and bool(UUID_RE.match(text)),
                        f"expected valid UUID, got {_got(actual)}"),
        "string:uuidv7": (text is not None and bool(UUIDV7_RE.match(text)),
                          f"expected valid UUIDv7, got {_got(actual)}"),
        "string:datetime": (text is not None and bool(DATETIME_RE.match(text)),
                            f"expected RFC 3339 datetime, got {_got(actual)}"),
        "number:positive": (number is not None and number > 0,
                            f"expected positive number, got {_got(actual)}"),
        "number:non_negative": (number is not None and number >= 0,
                                f"expected non-negative number, got {_got(actual)}"),
        "array:nonempty": (isinstance(actual, list) and len(actual) > 0,
                           f"expected non-empty array, got {_got(actual)}"),
        "array:empty": (isinstance(actual, list) and not actual,
                        f"expected empty array, got {_got(actual)}"),
    }
    checks["string:non_empty"] = checks["string:nonempty"]
    ok, message = checks[matcher]
    return None if ok else message


_FIXED = frozenset(("any", "exists", "absent", "string:nonempty", "string:non_empty",
                    "string:uuid", "string:uuidv7", "string:datetime", "number:positive",
                    "number:non_negative", "array:nonempty", "array:empty"))


def _match_string(matcher: str, actual: Any) -> str | None:
    if matcher in _FIXED:
        return None if matcher == "any" else _match_fixed(matcher, actual)
    for prefix, at_least in (("array:min_length:", True), ("array:min:", True),
                             ("array:length:", False)):
        if matcher.startswith(prefix):
            return _array_count(matcher, prefix, actual, at_least)
    if matcher.startswith(("contains:", "not_contains:")):
        return _contains(matcher, actual, matcher.startswith("not_"))
    if matcher.startswith("string:contains:"):
        needle = matcher[len("string:contains:") :]
        if isinstance(actual, str) and needle in actual:
            return None
        return f"expected string containing {go_quote(needle)}, got {_got(actual)}"
    return _match_string_patterns(matcher, actual)


def _match_string_patterns(matcher: str, actual: Any) -> str | None:
    number = _number(actual)
    if found := _RANGE_RE.match(matcher):
        low, high = float(found.group(1)), float(found.group(2))
        if number is not None and low <= number <= high:
            return None
        return f"expected number in range [{found.group(1)}, {found.group(2)}], got {_got(actual)}"
    if found := _LENGTH_RE.match(matcher):
        return _array_count(f"array:length:{found.group(1)}", "array:length:", actual, False)
    if found := _APPROX_RE.match(matcher):
        expected = float(found.group(1))
        tolerance = expected * APPROX_TOLERANCE_PCT / 100.0
        if number is not None and abs(number - expected) <= tolerance:
            return None
        return f"expected ~{go_format_float(expected)} (tolerance 50%), got {_got(actual)}"
    if matcher.startswith("string:pattern(") and matcher.endswith(")"):
        pattern = matcher[len("string:pattern(") : -1]
        if not isinstance(actual, str):
            return f"expected string matching pattern {go_quote(pattern)}, got {_got(actual)}"
        return _regex_search(pattern, actual)
    if not isinstance(actual, str):
        return f"expected string {go_quote(matcher)}, got {_got(actual)}"
    return None if actual == matcher else f"expected {go_quote(matcher)}, got {go_quote(actual)}"


def _match_array(expected: list[Any], actual: Any) -> str | None:
    if not isinstance(actual, list):
        return f"expected array, got {_got(actual)}"
    if len(actual) != len(expected):
        return f"expected array of length {len(expected)}, got length {len(actual)}"
    for index, (sub, item) in enumerate(zip(expected, actual, strict=True)):
        if (error := match_assertion(sub, item)) is not None:
            return f"[{index}]: {error}"
    return None


def _match_object(expected: dict[str, Any], actual: Any) -> str | None:
    for operator, handler in _OPERATORS:
        if operator in expected:
            return handler(expected, actual)
    if "$empty" in expected:
        return None
    if "range" in expected:
        return _match_range(expected["range"], actual)
    if not isinstance(actual, dict):
        return f"expected object, got {_got(actual)}"
    for key, sub in expected.items():
        if sub == "absent":
            if key in actual:
                return f"field {go_quote(key)}: expected absent, but field exists"
            continue
        if key not in actual:
            return f"field {go_quote(key)}: expected to exist but is missing"
        if (error := match_assertion(sub, actual[key])) is not None:
            return f"field {go_quote(key)}: {error}"
    return None


def _json_type(value: Any) -> str:
    names = {"string": "string", "float64": "number", "bool": "boolean", "<nil>": "null",
             "[]interface {}": "array", "map[string]interface {}": "object"}
    return names.get(go_type(value), go_type(value))


def _match_exists(expected: dict[str, Any], actual: Any) -> str | None:
    wanted = expected["$exists"]
    if wanted is not None and not isinstance(wanted, bool):
        return f"invalid $exists value: {json.dumps(wanted)}"
    if wanted and actual is None:
        return "expected field to exist, but it is missing"
    if not wanted and actual is not None:
        return f"expected field to not exist, but got {_got(actual)}"
    kind = expected.get("$type", 0)  # a non-string $type is skipped, null means ""
    if (kind is None or isinstance(kind, str)) and (kind or "") != _json_type(actual):
        return f"expected type {go_quote(kind or '')}, got {go_quote(_json_type(actual))}"
    return None


def _match_regex(expected: dict[str, Any], actual: Any) -> str | None:
    pattern = expected["$match"]
    if pattern is not None and not isinstance(pattern, str):
        return f"invalid $match value: {json.dumps(pattern)}"
    if not isinstance(actual, str):
        return f"expected string for $match, got {_got(actual)}"
    return _regex_search(pattern or "", actual)


def _match_any_of(expected: dict[str, Any], actual: Any, key: str) -> str | None:
    options = expected[key]
    if options is not None and not isinstance(options, list):
        return f"invalid {key} value: {json.dumps(options)}"
    if any(match_assertion(option, actual) is None for option in options or []):
        return None
    return f"value {go_json_marshal(actual)} did not match any {key} alternative"


def _match_size(expected: dict[str, Any], actual: Any) -> str | None:
    if not isinstance(actual, list):
        return f"expected array for $size, got {_got(actual)}"
    size = expected["$size"]
    if size is None or _is_int_literal(size):
        wanted = size or 0
        ok = len(actual) == wanted
        return None if ok else f"expected array of size {wanted}, got {len(actual)}"
    if isinstance(size, dict) and "$gte" in size:
        gte = size["$gte"]
        if gte is None or _is_int_literal(gte):
            ok = len(actual) >= (gte or 0)
            return None if ok else f"expected array of size >= {gte or 0}, got {len(actual)}"
    return f"unsupported $size format: {json.dumps(size)}"


def _match_range(bounds: Any, actual: Any) -> str | None:
    if bounds is not None and not isinstance(bounds, dict):
        return f"invalid range value: {json.dumps(bounds)}"
    number = _number(actual)
    if number is None:
        return f"expected number for range check, got {_got(actual)}"
    bounds = bounds or {}
    low = bounds.get("min", "skip")
    high = bounds.get("max", "skip")
    low = 0.0 if low is None else _number(low)
    high = 0.0 if high is None else _number(high)
    if low is not None and number < low:
        return f"expected number >= {go_format_float(low)}, got {go_format_float(number)}"
    if high is not None and number > high:
        return f"expected number <= {go_format_float(high)}, got {go_format_float(number)}"
    return None


_OPERATORS = (
    ("$exists", _match_exists),
    ("$match", _match_regex),
    ("$in", lambda expected, actual: _match_any_of(expected, actual, "$in")),
    ("$size", _match_size),
    ("$or", lambda expected, actual: _match_any_of(expected, actual, "$or")),
)


# --------------------------------------------------------------------------- status, headers


def match_status(expected: Any, status: int) -> str | None:
    """The ``status`` assertion: int, ``"one_of:a,b"``, a string matcher, ``{"$in": [...]}``."""
    if expected is None or _is_int_literal(expected):
        wanted = expected or 0
        return None if status == wanted else f"Expected status {wanted}, got {status}"
    if isinstance(expected, str):
        if expected.startswith("one_of:"):
            codes = expected[len("one_of:") :]
            for code in (part.strip() for part in codes.split(",")):
                if not _ATOI_RE.match(code):
                    return f"invalid status code {go_quote(code)} in one_of matcher"
                if int(code) == status:
                    return None
            return f"expected status one of [{codes}], got {status}"
        return match_assertion(expected, float(status))
    if isinstance(expected, dict) and "$in" in expected:
        codes_in = expected["$in"]
        if codes_in is None or (
            isinstance(codes_in, list) and all(_is_int_literal(code) for code in codes_in)
        ):
            if status in (codes_in or []):
                return None
            return f"Expected status in {go_sprint(codes_in or [])}, got {status}"
    return f"Unknown status assertion format: {json.dumps(expected)}"


def match_header(expected: Any, actual: str) -> str | None:
    """A header assertion against the first value of the header (``""`` when missing)."""
    if isinstance(expected, dict):
        if "$match" in expected:
            return _regex_search(str(expected["$match"]), actual)
        if "$eq" in expected and actual != expected["$eq"]:
            return f"expected {go_quote(str(expected['$eq']))}, got {go_quote(actual)}"
        return None
    wanted = expected if isinstance(expected, str) else go_json_marshal(expected)
    return None if actual == wanted else f"expected {go_quote(wanted)}, got {go_quote(actual)}"
