"""The job-versioning extension over HTTP, against a real `ojs-server`: the version a producer
stamps on a job (a field, or `type@version`) is kept as sent through enqueue, batch, fetch and
completion; unversioned jobs carry none; two versions of a type are different unique jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServer
from tests.fixtures.broker_process import serving


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, _test_db_numbers: Iterator[int],
        ) -> Iterator[httpx.Client]:
    # One server for the module: every test uses queues of its own.
    url = redis_server.url_for_db(next(_test_db_numbers))
    with serving(url, tmp_path_factory.mktemp("versioning-server")) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def enqueue(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/ojs/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


@pytest.mark.parametrize("version", [3, "2.0", "2.0.0-rc.1"])
def test_the_version_is_kept_as_sent_through_enqueue_fetch_and_completion(api: httpx.Client, version: Any) -> None:
    queue = f"ver-life-{str(version).replace('.', '-').lower()}"
    # Given
    job = enqueue(api, {"type": "data.process", "args": ["d1"], "version": version, "options": {"queue": queue}})
    assert job["version"] == version
    # When: fetched and acknowledged
    fetched = api.post("/ojs/v1/workers/fetch", json={"queues": [queue], "worker_id": "ver-w1"}).json()["jobs"]
    assert [(j["id"], j["version"]) for j in fetched] == [(job["id"], version)]
    acked = api.post("/ojs/v1/workers/ack", json={"job_id": job["id"], "worker_id": "ver-w1"})
    assert acked.status_code == 200, acked.text
    # Then
    done = api.get(f"/ojs/v1/jobs/{job['id']}").json()["job"]
    assert (done["state"], done["version"]) == ("completed", version)


def test_a_version_in_the_type_is_split_off_and_the_version_field_wins_over_it(api: httpx.Client) -> None:
    embedded = enqueue(api, {"type": "invoice.generate@2.0", "args": [], "options": {"queue": "ver-at"}})
    assert (embedded["type"], embedded["version"]) == ("invoice.generate", "2.0")
    both = enqueue(api, {"type": "invoice.generate@2.0", "version": "3.1", "args": [], "options": {"queue": "ver-at"}})
    assert (both["type"], both["version"]) == ("invoice.generate", "3.1")
    assert api.get(f"/ojs/v1/jobs/{embedded['id']}").json()["job"]["type"] == "invoice.generate"


def test_an_unversioned_job_carries_no_version(api: httpx.Client) -> None:
    job = enqueue(api, {"type": "email.send", "args": [], "options": {"queue": "ver-none"}})
    assert "version" not in job
    assert "version" not in api.get(f"/ojs/v1/jobs/{job['id']}").json()["job"]


def test_each_job_of_a_batch_keeps_its_own_version(api: httpx.Client) -> None:
    jobs = [{"type": "email.send", "args": [], "options": {"queue": "ver-batch"}, **extra}
            for extra in ({"version": 1}, {}, {"version": "2.1"}, {"type": "email.send@4"})]
    response = api.post("/ojs/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 201, response.text
    assert [j.get("version") for j in response.json()["jobs"]] == [1, None, "2.1", "4"]


@pytest.mark.parametrize("body", [
    {"type": "email.send", "args": [], "version": "v2"},
    {"type": "email.send", "args": [], "version": -1},
    {"type": "email.send", "args": [], "version": True},
    {"type": "email.send", "args": [], "version": {"major": 2}},
    {"type": "email.send@", "args": []},
    {"type": "email.send@two", "args": []},
])
def test_a_malformed_version_is_400(api: httpx.Client, body: dict[str, Any]) -> None:
    response = api.post("/ojs/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_two_versions_of_a_type_are_different_unique_jobs(api: httpx.Client) -> None:
    def unique(version: Any) -> dict[str, Any]:
        return {"type": "report.build", "args": ["monthly"], "version": version,
                "options": {"queue": "ver-unique", "unique": {"keys": ["type", "args"]}}}
    first = enqueue(api, unique("1.0"))
    second = enqueue(api, unique("2.0"))
    assert first["id"] != second["id"]
    again = api.post("/ojs/v1/jobs", json=unique("1.0"))
    assert again.status_code == 409, again.text
    assert again.json()["error"]["details"]["existing_job_id"] == first["id"]


# --- routing by version at fetch -------------------------------------------------------------


def fetch_ids(api: httpx.Client, queue: str, **declared: Any) -> list[tuple[str, Any]]:
    response = api.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": 10, **declared})
    assert response.status_code == 200, response.text
    return [(j["args"][0], j.get("version")) for j in response.json()["jobs"]]


def test_a_worker_that_declares_versions_gets_only_those_and_the_rest_wait_for_a_compatible_one(
    api: httpx.Client,
) -> None:
    queue = "ver-route"
    for name, version in (("old", "1.4"), ("new", "2.0"), ("plain", None), ("newer", "2.10"), ("rc", "2.0.0-rc.1")):
        extra = {} if version is None else {"version": version}
        enqueue(api, {"type": "invoice.generate", "args": [name], **extra, "options": {"queue": queue}})
    enqueue(api, {"type": "email.send", "args": ["other-type"], "version": "1.0", "options": {"queue": queue}})
    # When: a worker that takes 2.x of invoice.generate (and anything of other types) fetches
    got = fetch_ids(api, queue, handlers=[{"type": "invoice.generate", "versions": ">=2.0, <3.0"}])
    # Then: 2.0 and 2.10 (2.10 > 2.0 as versions), the unversioned job and the other type's job;
    # not 2.0.0-rc.1, which precedes 2.0
    assert got == [("new", "2.0"), ("plain", None), ("newer", "2.10"), ("other-type", "1.0")]
    # And: the 1.4 and 2.0.0-rc.1 jobs stay available for a worker that takes them
    assert fetch_ids(api, queue, versions={"invoice.generate": ">=2.0 <3.0"}) == []
    assert fetch_ids(api, queue, versions={"invoice.generate": "1.4"}) == [("old", "1.4")]
    assert fetch_ids(api, queue, versions={"invoice.generate": "*"}) == [("rc", "2.0.0-rc.1")]


@pytest.mark.parametrize("declared", [
    {"versions": {"invoice.generate": "two"}},
    {"versions": {"invoice.generate": ">=1.0 <"}},
    {"handlers": [{"type": "invoice.generate", "versions": "~1.0"}]},
])
def test_a_malformed_version_range_is_400(api: httpx.Client, declared: dict[str, Any]) -> None:
    response = api.post("/ojs/v1/workers/fetch", json={"queues": ["ver-bad-range"], **declared})
    assert response.status_code == 400, response.text
    assert "versions of invoice.generate" in response.json()["error"]["message"]
