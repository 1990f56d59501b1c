"""fetch.lua's lean reply (reply "lean"): the part of a claimed job's hash a pool reads.

The full reply is each job's whole hash, read again after the claim (HGETALL), which a pool
mostly ignores and which cost Redis more than a third of the claim (the hash turned into a Lua
table and back). A lean claim reads the hash once, for its checks and its reply, and replies a
flat array of values in the order below, nil for an absent field, followed by the whole hash
when it holds what these fields cannot show (an error history, unknown fields). Decoded, it is
the hash restricted to these fields, or the whole hash: what `runtime.claimed_job.job_of_hash`
and the pool read of it comes out as from the full reply (a test holds the two equal).
"""

from __future__ import annotations

from runtime.broker.render import pairs_to_dict

# fetch.lua's LEAN_FIELDS, in its order.
LEAN_FIELDS: tuple[bytes, ...] = (
    b"id", b"queue", b"args", b"meta", b"priority", b"max_attempts", b"retry", b"tags", b"created_at",
    b"scheduled_at", b"error", b"nerr", b"workflow_id", b"parent_results", b"version", b"extra", b"checkpoint",
    b"wf_index", b"step_traces",
    b"state", b"type", b"attempt", b"started_at", b"claim", b"visibility_timeout_ms", b"timeout_ms",
    b"enqueued_at", b"suspect",
)
_N = len(LEAN_FIELDS)


def lean_hash(reply: list[bytes | None]) -> dict[bytes, bytes]:
    """One job of a lean fetch reply as the (partial) job hash it shows."""
    if len(reply) > _N:  # the whole hash follows
        return pairs_to_dict(reply[_N:])  # type: ignore[arg-type]
    return {name: value for name, value in zip(LEAN_FIELDS, reply, strict=True) if value is not None}
