"""What checking args against the schema registry costs the enqueue path, and the Python
`Client`'s enqueues going through the same check (real Redis, the broker in process)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from runtime import timefmt
from runtime.broker import args_schemas
from runtime.broker.core import Broker
from runtime.client import Client
from runtime.config import Settings
from runtime.errors import ArgsSchemaMismatch
from tests.broker.conftest import TEST_PREFIX, Run, body, new_job

STRINGS = {"type": "array", "items": {"type": "string"}}


def count_commands(broker: Broker) -> Counter[str]:
    """Every command the broker sends from now on, by name (FCALLs by their transition)."""
    sent: Counter[str] = Counter()
    scripts_execute, redis_execute = broker.scripts._execute, broker.redis.execute_command

    async def via_scripts(*args: Any, **kwargs: Any) -> Any:
        sent[str(args[1]).rsplit("_", 1)[-1] if args[0] == "FCALL" else args[0]] += 1
        return await scripts_execute(*args, **kwargs)

    async def via_client(*args: Any, **kwargs: Any) -> Any:
        sent[str(args[0])] += 1
        return await redis_execute(*args, **kwargs)

    broker.scripts._execute = via_scripts  # type: ignore[method-assign]
    broker.redis.execute_command = via_client  # type: ignore[method-assign]
    return sent


def register(broker: Broker, run: Run[Any], job_type: str, version: str, schema: Any) -> None:
    run(broker.schemas.register(job_type, version, schema, now_ms=timefmt.now_ms()))


def test_enqueues_of_types_without_a_schema_send_their_enqueue_script_and_nothing_else(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]],
) -> None:
    # Given: a registry with a schema for another type; this process' snapshot taken
    register(broker, run, "email.send", "1", STRINGS)
    enqueue(body("report.build"))
    sent = count_commands(broker)
    # When
    for _ in range(50):
        enqueue(body("report.build"))
    # Then: one round trip per enqueue, as without a registry
    assert sent == Counter({"enqueue": 50})


def test_an_empty_registry_costs_no_read_at_all(broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]]) -> None:
    sent = count_commands(broker)
    for _ in range(20):
        enqueue(body("report.build"))
    # The process' first enqueue reads the (absent) generation once, so that its enqueue script
    # is the one that writes (a refused first call would write nothing: a lost reply after it
    # would leave its client unsure of a job that was never created); the registry itself is
    # never read, and no enqueue is sent twice.
    assert sent == Counter({"enqueue": 20, "GET": 1})


def test_validators_are_compiled_once_per_registration_and_again_only_when_it_changes(
    broker: Broker, run: Run[Any], enqueue: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[Any] = []
    real = args_schemas.compile_schema

    def counting(document: Any) -> Any:
        compiled.append(document)
        return real(document)

    monkeypatch.setattr(args_schemas, "compile_schema", counting)
    register(broker, run, "email.send", "1", STRINGS)
    for n in range(20):
        enqueue({"type": "email.send", "args": [f"user{n}@example.com"]})
    assert compiled == [STRINGS]
    # When: another registration changes the registry (a new snapshot is read)
    register(broker, run, "report.build", "1", {"type": "array"})
    enqueue({"type": "email.send", "args": ["a@example.com"]})
    # Then: the unchanged registration keeps its validator
    assert compiled == [STRINGS]
    # When: this one is replaced by another schema
    run(broker.schemas.delete("email.send", "1"))
    register(broker, run, "email.send", "1", {"type": "array", "maxItems": 1})
    # Then: the new one is compiled and applies
    with pytest.raises(ArgsSchemaMismatch, match=r"args: \['a', 'b'\] is too long"):
        enqueue({"type": "email.send", "args": ["a", "b"]})
    enqueue({"type": "email.send", "args": [1]})
    assert compiled == [STRINGS, {"type": "array", "maxItems": 1}]


def test_a_refusal_from_a_stale_snapshot_is_checked_against_the_stored_registry(
    broker: Broker, run: Run[Any], redis_url: str,
) -> None:
    # Given: this broker's snapshot has a schema that another broker then removes
    register(broker, run, "email.send", "1", STRINGS)
    with pytest.raises(ArgsSchemaMismatch):
        run(broker.enqueue([new_job({"type": "email.send", "args": [1]})], now_ms=timefmt.now_ms()))
    other = Broker(broker.redis, Settings(redis_url=redis_url, key_prefix=TEST_PREFIX))
    run(other.schemas.delete("email.send", "1"))
    # When / Then: the same args are accepted
    done = run(broker.enqueue([new_job({"type": "email.send", "args": [1]})], now_ms=timefmt.now_ms()))
    assert len(done) == 1


def test_the_python_client_enqueue_is_checked_too(broker: Broker, run: Run[Any], redis_url: str) -> None:
    register(broker, run, "email.send", "2", STRINGS)

    async def produce() -> tuple[str | None, str]:
        async with Client(redis_url, settings=Settings(redis_url=redis_url, key_prefix=TEST_PREFIX)) as client:
            with pytest.raises(ArgsSchemaMismatch) as refused:
                await client.enqueue("email.send@2", ["a@example.com", 7])
            return await client.enqueue("email.send@2", ["a@example.com"]), refused.value.message

    job_id, message = run(produce())
    assert "email.send@2: args[1]: 7 is not of type 'string'" in message
    assert job_id is not None
    stored = run(broker.get(job_id))
    assert (stored[b"type"], stored[b"version"]) == (b"email.send", b'"2"')
