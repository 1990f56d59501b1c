"""Planning a workflow request into one graph of member jobs, nested parts included.

Chains, groups and batches nest inside each other (a step of a chain, or a job of a group or
batch, that has `steps`, `jobs` or `callbacks` is a nested workflow, as the SDKs send it; a job
whose *type* is "chain" stays a job). Nesting is flattened here into dependencies between the
member jobs, so advance.lua runs every shape with one set of rules:

- a part's entry jobs depend on what precedes the part; what follows it depends on its exit
  jobs (a chain's last step, every job of a group, a batch's jobs and its callbacks);
- a batch's callbacks depend on the batch's exit jobs and judge their condition by those alone,
  so a nested batch's callbacks react to their own batch, not to the whole workflow;
- a member's `parent_results` come from a context: the results of the steps before it in its
  innermost chain, or, for the first job of a nested part, what the part itself receives; a
  nested part's result is its jobs' results in order (a chain's: its last step's result).
  Contexts name a prefix of a stored sequence of result expressions (workflow field q<k>, a
  JSON array whose numbers are member indexes and whose arrays are nested parts' results), so
  the record grows with the number of members, not with the square of a chain's length.

The whole workflow, however nested, is still created by one enqueue.lua call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from runtime.broker.records import NewJob, job_from_body
from runtime.errors import InvalidRequest, OJSError

MAX_MEMBERS = 1_000
# Levels of nesting, the outermost workflow being level 1: chain > group > chain is 3. Deeper
# requests are refused at creation, before anything runs.
MAX_NESTING_DEPTH = 5
CALLBACKS = ("on_complete", "on_success", "on_failure")
_CONDITION = {"on_complete": "always", "on_success": "success", "on_failure": "failure"}
_PART_FIELDS = ("steps", "jobs", "callbacks")

StepList = Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_MEMBERS)]
Result = int | list[Any]  # a member's index, or a nested part's results in job order


class WorkflowRequest(msgspec.Struct, kw_only=True):
    type: Literal["chain", "group", "batch"] | None = None
    name: Annotated[str, Meta(max_length=255)] | None = None
    steps: StepList | None = None
    jobs: StepList | None = None
    callbacks: dict[str, dict[str, Any]] | None = None
    options: dict[str, Any] | None = None


class Member(msgspec.Struct, kw_only=True):
    label: str
    job: NewJob
    deps: list[int]
    condition: str | None = None  # callbacks: always | success | failure
    # A callback of a nested batch: the workflow waits for it (the top-level batch's callbacks
    # run after the workflow has ended, as they always have).
    awaited_callback: bool = False
    context: str | None = None  # "<sequence>:<count>": where its parent_results come from


class Plan(msgspec.Struct, kw_only=True):
    kind: str
    members: list[Member]
    total: int  # plain members (callbacks are not counted)
    sequences: list[list[Result]]


def _at(where: str, message: str) -> str:
    """A message about the part at `where` ("" for the workflow itself)."""
    return f"{where.rstrip('.')}: {message}" if where else message


def is_part(step: dict[str, Any]) -> bool:
    return any(f in step for f in _PART_FIELDS)


def _step_job(step: dict[str, Any], defaults: dict[str, Any] | None, now_ms: int, where: str) -> NewJob:
    if is_part(step):
        raise InvalidRequest(f"{where}: a nested workflow is allowed only as a step of a chain or a job of a "
                             "group or batch; in the depends_on form, flatten it into depends_on")
    body = {k: v for k, v in step.items() if k not in ("id", "depends_on", "name")}
    body.setdefault("args", [])  # steps without args, as documented bodies send them
    if defaults:
        body["options"] = {**defaults, **(body.get("options") or {})}
    try:
        return job_from_body(msgspec.json.encode(body), now_ms=now_ms)
    except OJSError as err:
        err.message = f"{where}: {err.message}"
        raise


def _nested_request(step: dict[str, Any], where: str) -> WorkflowRequest:
    if step.get("type") not in ("chain", "group", "batch"):
        raise InvalidRequest(f"{where}: a nested workflow needs type chain, group or batch")
    try:
        return msgspec.convert(step, WorkflowRequest)
    except msgspec.ValidationError as err:
        raise InvalidRequest(f"{where}: {err}") from None


def _dag_deps(steps: list[dict[str, Any]]) -> list[list[int]]:
    """depends_on ids into member indexes; unknown ids and cycles are rejected."""
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        sid = step.get("id")
        if not isinstance(sid, str) or not sid or sid in index:
            raise InvalidRequest(f"steps[{i}].id must be a unique non-empty string")
        index[sid] = i
    deps: list[list[int]] = []
    for i, step in enumerate(steps):
        wanted = step.get("depends_on") or []
        if not isinstance(wanted, list) or not all(isinstance(d, str) for d in wanted):
            raise InvalidRequest(f"steps[{i}].depends_on must be a list of step ids")
        missing = [d for d in wanted if d not in index]
        if missing:
            raise InvalidRequest(f"steps[{i}].depends_on: unknown step ids {missing}")
        deps.append(sorted({index[d] for d in wanted}))
    _check_acyclic(deps)
    return deps


def _check_acyclic(deps: list[list[int]]) -> None:
    remaining = {i: set(d) for i, d in enumerate(deps)}
    while remaining:
        ready = [i for i, d in remaining.items() if not d]
        if not ready:
            raise InvalidRequest("workflow steps form a cycle")
        for i in ready:
            del remaining[i]
        for d in remaining.values():
            d.difference_update(ready)


class _Builder:
    """Flattens chain / group / batch parts, depth first, into members in request order."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.members: list[Member] = []
        self.sequences: list[list[Result]] = []

    def add(self, member: Member) -> int:
        if len(self.members) >= MAX_MEMBERS:
            raise InvalidRequest(f"a workflow holds at most {MAX_MEMBERS} jobs")
        self.members.append(member)
        return len(self.members) - 1

    def item(self, spec: dict[str, Any], where: str, label: str, deps: list[int], context: str | None,
             defaults: dict[str, Any] | None, depth: int) -> tuple[list[int], Result]:
        """One step or job, plain or nested: (its exit members, its result expression)."""
        if not is_part(spec):
            job = _step_job(spec, defaults, self.now_ms, where)
            i = self.add(Member(label=label, job=job, deps=list(deps), context=context))
            return [i], i
        if depth >= MAX_NESTING_DEPTH:
            raise InvalidRequest(f"{where}: workflows nest at most {MAX_NESTING_DEPTH} levels deep "
                                 "(the outermost workflow is level 1)")
        return self.part(_nested_request(spec, where), f"{where}.", f"{label}.", deps, context, defaults, depth + 1)

    def part(self, req: WorkflowRequest, where: str, prefix: str, deps: list[int], context: str | None,
             defaults: dict[str, Any] | None, depth: int) -> tuple[list[int], Result]:
        defaults = {**(defaults or {}), **(req.options or {})} or None
        if req.type == "chain":
            steps = req.steps or req.jobs
            if not steps:
                raise InvalidRequest(_at(where, "a chain needs at least one step in steps"))
            sequence: list[Result] = []
            self.sequences.append(sequence)
            number = len(self.sequences) - 1
            exits, result = deps, None
            for i, s in enumerate(steps):
                exits, result = self.item(s, f"{where}steps[{i}]", f"{prefix}{i}", exits, context, defaults, depth)
                sequence.append(result)
                context = f"{number}:{i + 1}"
            assert result is not None
            return exits, result
        jobs = req.jobs or req.steps
        if not jobs:
            raise InvalidRequest(_at(where, f"a {req.type} needs at least one job in jobs"))
        exits, results = [], []
        for i, j in enumerate(jobs):
            e, r = self.item(j, f"{where}jobs[{i}]", f"{prefix}{i}", deps, context, defaults, depth)
            exits += e
            results.append(r)
        callbacks = req.callbacks or {}
        unknown = set(callbacks) - set(CALLBACKS)
        if unknown:
            raise InvalidRequest(_at(where, f"unknown callbacks: {sorted(unknown)}"))
        if req.type == "batch" and not callbacks:
            raise InvalidRequest(_at(where, "a batch needs at least one of callbacks.on_complete, on_success, "
                                            "on_failure"))
        if callbacks:
            self.sequences.append(results)
            results_of_jobs = f"{len(self.sequences) - 1}:{len(results)}"
            nested = depth > 1
            fired = [self.add(Member(
                label=f"{prefix}{name}", job=_step_job(callbacks[name], None, self.now_ms, f"{where}callbacks.{name}"),
                deps=list(exits), condition=_CONDITION[name], awaited_callback=nested, context=results_of_jobs))
                for name in CALLBACKS if name in callbacks]
            if nested:  # what follows a nested batch waits for its callbacks too
                exits = exits + fired
        return exits, results


def build(req: WorkflowRequest, now_ms: int) -> Plan:
    """The graph for a request in any accepted form."""
    if req.type is None:
        if not req.steps:
            raise InvalidRequest("a workflow needs type chain|group|batch, or steps with id and depends_on")
        deps = _dag_deps(req.steps)
        members = [Member(label=str(s["id"]), job=_step_job(s, req.options, now_ms, f"steps[{i}]"), deps=deps[i])
                   for i, s in enumerate(req.steps)]
        return Plan(kind="dag", members=members, total=len(members), sequences=[])
    builder = _Builder(now_ms)
    builder.part(req, "", "", [], None, None, 1)
    total = sum(1 for m in builder.members if m.condition is None)
    return Plan(kind=req.type, members=builder.members, total=total, sequences=builder.sequences)


def plan(req: WorkflowRequest, now_ms: int) -> tuple[str, list[Member], int]:
    """(kind, members, number of plain members) for a request in any accepted form."""
    p = build(req, now_ms)
    return p.kind, p.members, p.total
