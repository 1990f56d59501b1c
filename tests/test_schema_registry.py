"""The schema registry extension over HTTP, against real `ojs-server` processes: registration in
both spellings (ojs-schema-registry.md and ojs-job-versioning.md), and enqueues checked against
the registered schemas (single, batch, and from a server that did not do the registration)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import RedisServer
from tests.fixtures.broker_process import BrokerProcess, serving

INVOICE_V1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "prefixItems": [{
        "type": "object",
        "required": ["customer_id", "amount"],
        "properties": {"customer_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0}},
    }],
    "minItems": 1,
}
INVOICE_V2 = {
    **INVOICE_V1,
    "prefixItems": [{
        "type": "object",
        "required": ["customer_id", "amount", "currency"],
        "properties": {
            "customer_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
    }],
}


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, _test_db_numbers: Iterator[int],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One server for the module's tests (its database is emptied before each, as the
    conformance runner does: the server must forget what it had cached of the registry)."""
    url = redis_server.url_for_db(next(_test_db_numbers))
    with serving(url, tmp_path_factory.mktemp("schema-server")) as started:
        yield started


@pytest.fixture
def api(server: BrokerProcess) -> Iterator[httpx.Client]:
    store = redis.Redis.from_url(server.redis_url)
    try:
        store.flushdb()
    finally:
        store.close()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def register(api: httpx.Client, job_type: str, version: str, schema: Any) -> httpx.Response:
    return api.post("/ojs/v1/schemas", json={"job_type": job_type, "version": version, "schema": schema})


def enqueue(api: httpx.Client, job_type: str, args: list[Any], **extra: Any) -> httpx.Response:
    return api.post("/ojs/v1/jobs", json={"type": job_type, "args": args, **extra})


# --- registration ---------------------------------------------------------------------------


def test_registered_versions_are_listed_newest_first_and_the_latest_follows_deletes(api: httpx.Client) -> None:
    # Given: three versions, registered out of order
    for version, schema in (("1.10.0", INVOICE_V2), ("1.9.0", INVOICE_V1), ("2.0.0", INVOICE_V2)):
        created = register(api, "invoice.generate", version, schema)
        assert created.status_code == 201, created.text
        assert created.json()["schema"]["version"] == version
    # When / Then: the latest is the highest by version precedence (1.10 > 1.9), not the last one
    latest = api.get("/ojs/v1/schemas/invoice.generate").json()["schema"]
    assert latest["version"] == "2.0.0" and latest["schema"] == INVOICE_V2 and latest["job_type"] == "invoice.generate"
    listed = api.get("/ojs/v1/schemas/invoice.generate/versions").json()["versions"]
    assert [(v["version"], v["is_latest"]) for v in listed] == [("2.0.0", True), ("1.10.0", False), ("1.9.0", False)]
    # When: the latest is deleted, the next one is the latest
    assert api.delete("/ojs/v1/schemas/invoice.generate/2.0.0").status_code == 200
    assert api.get("/ojs/v1/schemas/invoice.generate").json()["schema"]["version"] == "1.10.0"
    assert api.get("/ojs/v1/schemas/invoice.generate/1.9.0").json()["schema"]["schema"] == INVOICE_V1
    # And: deleting what is not there is a 404
    assert api.delete("/ojs/v1/schemas/invoice.generate/2.0.0").status_code == 404
    assert api.get("/ojs/v1/schemas/invoice.generate/2.0.0").status_code == 404


def test_admin_spelling_shows_the_same_registry_flat_with_integer_versions(api: httpx.Client) -> None:
    # Given: a version registered by PUT at its path, another by POST
    put = api.put("/ojs/v1/admin/schemas/email.send/1", json={"schema": {"type": "array"}})
    assert put.status_code == 201, put.text
    assert (put.json()["type"], put.json()["version"]) == ("email.send", 1)
    assert register(api, "email.send", "2", {"type": "array", "minItems": 1}).status_code == 201
    # When
    latest = api.get("/ojs/v1/admin/schemas/email.send").json()
    # Then: flat, the version a number, the list of versions beside it
    assert (latest["type"], latest["version"], latest["schema"]) == ("email.send", 2, {"type": "array", "minItems": 1})
    assert [v["version"] for v in latest["versions"]] == [2, 1]
    assert api.get("/ojs/v1/admin/schemas/email.send/1").json()["schema"] == {"type": "array"}
    assert api.delete("/ojs/v1/admin/schemas/email.send/2").json()["deleted"] is True
    assert api.get("/ojs/v1/admin/schemas/email.send").json()["version"] == 1


def test_a_version_is_registered_once_and_a_second_registration_keeps_the_first(api: httpx.Client) -> None:
    assert register(api, "payment.process", "1.0.0", INVOICE_V1).status_code == 201
    again = register(api, "payment.process", "1.0.0", INVOICE_V2)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "duplicate"
    assert api.get("/ojs/v1/schemas/payment.process").json()["schema"]["schema"] == INVOICE_V1


@pytest.mark.parametrize(("path", "body"), [
    ("/ojs/v1/admin/schemas/invalid.empty/1", {}),
    ("/ojs/v1/admin/schemas/invalid.empty/1", {"schema": None}),
    ("/ojs/v1/admin/schemas/invalid.empty/1", {"schema": {}, "version": 2}),  # not the path's version
    ("/ojs/v1/admin/schemas/Not_A_Type/1", {"schema": {}}),
    ("/ojs/v1/admin/schemas/invalid.empty/v1", {"schema": {}}),
    ("/ojs/v1/schemas", {"job_type": "invalid.empty", "schema": {}}),  # no version
    ("/ojs/v1/schemas", {"version": "1.0.0", "schema": {}}),  # no job type
    ("/ojs/v1/schemas", {"job_type": "invalid.empty", "version": "1.0.0"}),  # no schema
])
def test_a_registration_without_its_fields_is_400(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = api.request("PUT" if "admin" in path else "POST", path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_payload")
    assert api.get("/ojs/v1/schemas/invalid.empty").status_code == 404


@pytest.mark.parametrize(("schema", "path"), [
    ({"type": "no-such-type"}, "schema.type"),
    ({"type": "object", "properties": {"n": {"minimum": "zero"}}}, "schema.properties.n.minimum"),
    ({"$schema": "https://example.com/not-a-dialect", "type": "array"}, None),
    ({"$schema": ["not", "a", "uri"], "type": "array"}, None),
    ([1, 2], None),
])
def test_a_document_that_is_no_json_schema_is_refused_with_422(api: httpx.Client, schema: Any, path: str | None) -> None:
    response = register(api, "broken.schema", "1.0.0", schema)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    if path is not None:
        assert error["details"]["path"] == path and path in error["message"]
    assert api.get("/ojs/v1/schemas/broken.schema").status_code == 404


def test_a_schema_without_dollar_schema_in_the_older_tuple_form_is_read_as_draft_2019_09(api: httpx.Client) -> None:
    # Given: `items` as an array (draft 2019-09's tuple form; 2020-12 spells it prefixItems)
    assert register(api, "tuple.form", "1", {"type": "array", "items": [{"type": "string"}]}).status_code == 201
    # Then: its items are checked positionally
    assert enqueue(api, "tuple.form", ["a", 5]).status_code == 201
    refused = enqueue(api, "tuple.form", [5])
    assert refused.status_code == 422 and refused.json()["error"]["details"]["path"] == "args[0]"


# --- enqueue checked against the registry ---------------------------------------------------


def test_enqueue_whose_args_miss_the_schema_is_422_naming_the_failing_path(api: httpx.Client) -> None:
    assert register(api, "invoice.generate", "2.0.0", INVOICE_V2).status_code == 201
    # When
    response = enqueue(api, "invoice.generate", [{"customer_id": "c1", "amount": "12", "currency": "USD"}],
                       version="2.0.0")
    # Then
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["path"] == "args[0].amount"
    assert "args[0].amount" in error["message"] and "invoice.generate@2.0.0" in error["message"]
    assert error["details"]["validation_errors"] == ["args[0].amount: '12' is not of type 'integer'"]
    # And: matching args are accepted
    good = enqueue(api, "invoice.generate", [{"customer_id": "c1", "amount": 12, "currency": "USD"}], version="2.0.0")
    assert good.status_code == 201, good.text


def test_an_unversioned_job_is_checked_against_the_latest_version_and_an_unregistered_version_is_not_checked(
    api: httpx.Client,
) -> None:
    assert register(api, "invoice.generate", "1.0.0", INVOICE_V1).status_code == 201
    assert register(api, "invoice.generate", "2.0.0", INVOICE_V2).status_code == 201
    v1_args = [{"customer_id": "c1", "amount": 5}]
    # Unversioned: the latest (2.0.0) requires currency
    assert enqueue(api, "invoice.generate", v1_args).status_code == 422
    # Versioned 1.0.0: its own schema
    assert enqueue(api, "invoice.generate", v1_args, version="1.0.0").status_code == 201
    # Version 1.0.0 in the type: the same
    assert enqueue(api, "invoice.generate@1.0.0", v1_args).status_code == 201
    # A version without a schema, and a type without any: nothing to check against
    assert enqueue(api, "invoice.generate", ["anything"], version="3.0.0").status_code == 201
    assert enqueue(api, "report.build", [{"whatever": True}]).status_code == 201


def test_a_batch_with_one_job_that_misses_its_schema_is_refused_whole_naming_that_job(api: httpx.Client) -> None:
    assert register(api, "email.send", "1", {"type": "array", "items": {"type": "string"}}).status_code == 201
    jobs = [
        {"type": "email.send", "args": ["a@example.com"], "options": {"queue": "schema-batch"}},
        {"type": "report.build", "args": [1], "options": {"queue": "schema-batch"}},
        {"type": "email.send", "args": ["b@example.com", 7], "options": {"queue": "schema-batch"}},
    ]
    # When
    response = api.post("/ojs/v1/jobs/batch", json={"jobs": jobs})
    # Then
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("jobs[2]: ")
    assert (error["details"]["index"], error["details"]["path"]) == (2, "args[1]")
    stats = api.get("/ojs/v1/queues/schema-batch/stats")
    assert stats.status_code == 404 or stats.json()["stats"]["available"] == 0  # nothing was inserted


def test_a_registration_on_one_server_checks_the_enqueues_of_another_at_once(
    redis_url: str, tmp_path: Path,
) -> None:
    with serving(redis_url, tmp_path) as a, serving(redis_url, tmp_path) as b, \
            httpx.Client(base_url=a.url, timeout=10) as api_a, httpx.Client(base_url=b.url, timeout=10) as api_b:
        # Given: server b has enqueued with an empty registry
        assert enqueue(api_b, "email.send", [1]).status_code == 201
        # When: server a registers a schema
        assert register(api_a, "email.send", "1", {"type": "array", "items": {"type": "string"}}).status_code == 201
        # Then: b's next enqueue is checked against it
        assert enqueue(api_b, "email.send", [1]).status_code == 422
        assert enqueue(api_b, "email.send", ["x@example.com"]).status_code == 201
        # And: once a deletes it, b no longer checks
        assert api_a.delete("/ojs/v1/schemas/email.send/1").status_code == 200
        assert enqueue(api_b, "email.send", [1]).status_code == 201


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},  # refers to itself for ever
    {"$ref": "https://example.com/schemas/args.json"},  # remote: never fetched
])
def test_a_schema_that_cannot_be_evaluated_refuses_the_enqueue_with_422_not_500(api: httpx.Client, schema: Any) -> None:
    assert register(api, "odd.schema", "1", schema).status_code == 201
    response = enqueue(api, "odd.schema", [1])
    assert response.status_code == 422, response.text
    assert "cannot be evaluated" in response.json()["error"]["message"]


def test_numbers_python_cannot_hold_are_a_4xx_in_a_schema_and_in_checked_args(api: httpx.Client) -> None:
    # Valid JSON, out of a float's range: sent as text, as a client may
    huge = api.post("/ojs/v1/schemas", content=b'{"job_type":"big.numbers","version":"1","schema":{"maximum":1e400}}')
    assert huge.status_code == 400, huge.text
    assert register(api, "big.numbers", "1", {"type": "array"}).status_code == 201
    refused = api.post("/ojs/v1/jobs", content=b'{"type":"big.numbers","args":[1e400]}')
    assert refused.status_code == 422, refused.text


def test_a_workflow_with_a_step_that_misses_its_schema_is_refused_whole(api: httpx.Client) -> None:
    assert register(api, "email.send", "1", {"type": "array", "items": {"type": "string"}}).status_code == 201
    steps = [{"type": "report.build", "args": ["2024-06-01"]}, {"type": "email.send", "args": [42]}]
    response = api.post("/ojs/v1/workflows", json={"type": "chain", "name": "checked", "steps": steps})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["path"] == "args[0]"
    assert api.get("/ojs/v1/workflows").json()["workflows"] == []
