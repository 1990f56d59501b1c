"""The job hash layout against its neighbours: a server of the previous version (a rolling deploy:
two versions share one store, each calling its own library) must still fail a job this version
wrote or rewrote, and the envelope's retry policy reads exactly as it did when every hash held it
whole, for every policy enqueue accepts.

The previous version is the last that stored the retry scalars at their defaults; its nack.lua
already applied the defaults to a hash without them. The versions before it read every scalar
from the hash: the README's "Upgrading" says to pass through that version from one of those."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from runtime import timefmt
from runtime.broker import failures
from runtime.broker.core import Broker
from runtime.broker.keys import SUFFIXES, Keys
from runtime.broker.migrations import RetryLayoutMigration
from runtime.broker.records import RETRY_FIELD_DEFAULTS, resolve_retry
from runtime.broker.render import encode_job
from runtime.broker.scripts import Status, _lua_table
from runtime.envelope import ErrorInfo
from tests.broker.conftest import Run, body

PREVIOUS = "b977b48"  # the last commit whose job hashes held the retry scalars at their defaults
OLD_LIB = "ojs_test_previous_layout"
ROOT = Path(__file__).resolve().parents[2]


def previous_source(name: str) -> str:
    path = f"{PREVIOUS}:runtime/broker/scripts/{name}.lua"
    shown = subprocess.run(["git", "-C", str(ROOT), "show", path], capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"the previous version's scripts are not in this clone's history ({path})")
    return shown.stdout


def load_previous_nack(client: redis.Redis) -> str:
    prelude = (f"local S = {_lua_table({s.name: s.value for s in Status})}\n"
               f"local K = {_lua_table(SUFFIXES)}\n"
               f"local D = {_lua_table(RETRY_FIELD_DEFAULTS)}\n{previous_source('lib')}\n")
    code = (f"#!lua name={OLD_LIB}\n{prelude}"
            f'redis.register_function("{OLD_LIB}_nack", function(KEYS, ARGV)\n'
            f"rcall = redis.call\n{previous_source('nack')}\nend)\n")
    client.function_load(code, replace=True)
    return f"{OLD_LIB}_nack"


def old_layout() -> dict[str, str]:
    """The retry fields of a default job as the layout before the previous one stored them."""
    p = resolve_retry(msgspec.Raw())
    return {"max_attempts": str(p.max_attempts), "retry": p.display_json, "r_initial_ms": str(p.initial_ms),
            "r_coef": repr(p.coefficient), "r_max_ms": str(p.max_ms), "r_jitter": "1" if p.jitter else "0",
            "r_strategy": p.strategy, "on_exhaustion": p.on_exhaustion}


@pytest.mark.parametrize("layout", ["previous-layout", "enqueued-by-this-version",
                                    "rewritten-by-retry-layout-upgrade"])
def test_previous_version_nack_fails_a_job_of_this_layout(
    enqueue: Callable[..., list[str]], broker: Broker, run: Run[Any], redis_client: redis.Redis, keys: Keys,
    layout: str,
) -> None:
    (job_id,) = enqueue(body())
    if layout != "enqueued-by-this-version":
        redis_client.hset(keys.job(job_id), mapping=old_layout())  # as the previous version stored it
    if layout == "rewritten-by-retry-layout-upgrade":
        assert run(RetryLayoutMigration(broker).run()) == 1
    (h,) = run(broker.fetch(["default"], worker_id="w1"))
    nack = load_previous_nack(redis_client)
    now = timefmt.now_ms()
    err = failures.error_record(ErrorInfo(message="boom", type="BoomError"), now)
    # The previous version's worker fails the job: a retryable error, attempt 1 of 3
    reply = redis_client.fcall(nack, 2, keys.prefix, keys.job(job_id), str(now), "1000", "3",
                               "retry", err, "w1", "1", h[b"claim"], "1", "")
    assert reply[0][:4] == [Status.OK, b"retryable", 1, 3]
    assert redis_client.hget(keys.job(job_id), "state") == b"retryable"


@pytest.mark.parametrize("policy", [
    {"initial_interval": "PT1S", "initial_interval_ms": 200, "max_interval_ms": 500},
    {"initial_interval": "PT400S", "max_interval": "PT300S", "max_interval_ms": 900_000},
], ids=["ms-overrides-initial", "ms-overrides-max"])
def test_envelope_retry_is_the_policy_resolved_at_enqueue(
    enqueue: Callable[..., list[str]], broker: Broker, run: Run[Any], policy: dict[str, Any],
) -> None:
    (job_id,) = enqueue(body(retry=policy))
    whole = resolve_retry(msgspec.Raw(msgspec.json.encode(policy))).display_json  # what the hash held
    shown = msgspec.json.decode(encode_job(run(broker.get(job_id))))["retry"]
    assert msgspec.json.encode(shown).decode() == whole
