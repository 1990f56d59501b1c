"""The multi-tenancy extension over HTTP, against a real server: the X-OJS-Tenant header on
enqueue, isolation of reads, cancels and fetches, the tenant stats and listing, bad headers."""

from __future__ import annotations

from typing import Any

from runtime import timefmt
from tests.admin.conftest import Api, assert_error
from tests.fixtures.procs import wait_until


def as_tenant(tenant: str) -> dict[str, str]:
    return {"X-OJS-Tenant": tenant}


def enqueue_for(api: Api, tenant: str | None, queue: str = "mt", **extra: Any) -> dict[str, Any]:
    body = {"type": "t.mt", "args": [tenant], "options": {"queue": queue}, **extra}
    reply = api.http.post("/ojs/v1/jobs", json=body, headers=as_tenant(tenant) if tenant else {})
    assert reply.status_code == 201, reply.text
    return dict(reply.json()["job"])


def fetch_as(api: Api, tenant: str | None, queue: str = "mt", count: int = 10) -> list[dict[str, Any]]:
    reply = api.http.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": count},
                          headers=as_tenant(tenant) if tenant else {})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["jobs"])


def test_the_header_becomes_meta_tenant_id_on_single_and_batch_enqueue(api: Api) -> None:
    job = enqueue_for(api, "acme-corp", meta={"trace_id": "t1"})
    assert job["meta"] == {"trace_id": "t1", "tenant_id": "acme-corp"}
    stored = api.http.get(f"/ojs/v1/jobs/{job['id']}", headers=as_tenant("acme-corp")).json()["job"]
    assert stored["meta"]["tenant_id"] == "acme-corp"
    batch = api.http.post("/ojs/v1/jobs/batch", headers=as_tenant("acme-corp"), json={"jobs": [
        {"type": "t.mt", "args": [1], "options": {"queue": "mt"}},
        {"type": "t.mt", "args": [2], "meta": {"tenant_id": "acme-corp"}, "options": {"queue": "mt"}},
    ]})
    assert batch.status_code == 201, batch.text
    assert [j["meta"]["tenant_id"] for j in batch.json()["jobs"]] == ["acme-corp", "acme-corp"]
    assert {j["id"] for j in fetch_as(api, "acme-corp")} == {job["id"], *(j["id"] for j in batch.json()["jobs"])}


def test_meta_tenant_id_alone_names_the_tenant_and_a_conflicting_header_is_refused(api: Api) -> None:
    job = enqueue_for(api, None, meta={"tenant_id": "globex"})
    assert [j["id"] for j in fetch_as(api, "other")] == []
    assert [j["id"] for j in fetch_as(api, "globex")] == [job["id"]]
    reply = api.http.post("/ojs/v1/jobs", headers=as_tenant("acme"),
                          json={"type": "t.mt", "args": [], "meta": {"tenant_id": "globex"}})
    assert "different tenants" in assert_error(reply, 400)["message"]
    batch = api.http.post("/ojs/v1/jobs/batch", headers=as_tenant("acme"), json={"jobs": [
        {"type": "t.mt", "args": []}, {"type": "t.mt", "args": [], "meta": {"tenant_id": "globex"}}]})
    assert "jobs[1]" in assert_error(batch, 400)["message"]
    assert_error(api.http.post("/ojs/v1/jobs", json={"type": "t.mt", "args": [], "meta": {"tenant_id": 7}}), 400)
    assert fetch_as(api, None, queue="default") == []  # nothing of the refused requests was stored


BAD_HEADERS = ("", "-starts-with-dash", "_default", "has space", "a/b", "a;b", "t" * 129, "caf\u00e9")


def test_a_header_that_is_not_a_tenant_id_is_a_400_everywhere(api: Api) -> None:
    job = enqueue_for(api, "acme")
    for header in BAD_HEADERS:
        headers = {"X-OJS-Tenant": header.encode("latin-1")}
        for reply in (
            api.http.post("/ojs/v1/jobs", json={"type": "t.mt", "args": []}, headers=headers),
            api.http.post("/ojs/v1/jobs/batch", json={"jobs": [{"type": "t.mt", "args": []}]}, headers=headers),
            api.http.get(f"/ojs/v1/jobs/{job['id']}", headers=headers),
            api.http.delete(f"/ojs/v1/jobs/{job['id']}", headers=headers),
            api.http.post("/ojs/v1/workers/fetch", json={"queues": ["mt"]}, headers=headers),
            api.http.get("/ojs/v1/queues/mt", headers=headers),
        ):
            assert "X-OJS-Tenant" in assert_error(reply, 400)["message"], header
    assert_error(api.http.get("/ojs/v1/admin/tenants/-bad-/stats"), 400)
    assert api.state(job["id"]) == "available"


def test_another_tenants_job_is_not_found_for_reads_and_cancels(api: Api) -> None:
    job = enqueue_for(api, "tenant-a")
    path = f"/ojs/v1/jobs/{job['id']}"
    assert_error(api.http.get(path, headers=as_tenant("tenant-b")), 404)
    assert_error(api.http.delete(path, headers=as_tenant("tenant-b")), 404)
    assert_error(api.http.post(path + "/cancel", json={}, headers=as_tenant("tenant-b")), 404)
    assert_error(api.http.patch(path, json={"priority": 9}, headers=as_tenant("tenant-b")), 404)
    assert_error(api.http.get(path + "/progress", headers=as_tenant("tenant-b")), 404)
    assert_error(api.http.put(path + "/progress", json={"progress": 0.5}, headers=as_tenant("tenant-b")), 404)
    missing = "/ojs/v1/jobs/01900000-0000-7000-8000-000000000000"
    assert_error(api.http.get(missing, headers=as_tenant("tenant-b")), 404)  # the same answer as a missing job
    own = api.http.get(path, headers=as_tenant("tenant-a")).json()["job"]
    assert own["state"] == "available" and own["priority"] == 0
    assert api.http.patch(path, json={"priority": 9}, headers=as_tenant("tenant-a")).status_code == 200
    # an untenanted job is no tenant's
    untenanted = enqueue_for(api, None)
    assert_error(api.http.get(f"/ojs/v1/jobs/{untenanted['id']}", headers=as_tenant("tenant-a")), 404)
    # its own tenant cancels it (POST .../cancel or DELETE), as does a request without the header
    reply = api.http.post(path + "/cancel", json={}, headers=as_tenant("tenant-a"))
    assert reply.status_code == 200 and reply.json()["job"]["state"] == "cancelled"
    assert api.http.delete(f"/ojs/v1/jobs/{untenanted['id']}").status_code == 200


def test_a_tenants_fetch_gets_only_its_jobs_and_the_others_stay_queued(api: Api) -> None:
    a1 = enqueue_for(api, "tenant-a")
    b1 = enqueue_for(api, "tenant-b")
    a2 = enqueue_for(api, "tenant-a")
    got = fetch_as(api, "tenant-b")
    assert [(j["id"], j["meta"]["tenant_id"], j["args"]) for j in got] == [(b1["id"], "tenant-b", ["tenant-b"])]
    assert {j["id"] for j in fetch_as(api, None)} == {a1["id"], a2["id"]}


def test_tenant_stats_count_the_tenants_jobs_by_state_and_the_listing_names_them(api: Api) -> None:
    for _ in range(3):
        enqueue_for(api, "stats-co")
    enqueue_for(api, "stats-co", queue="other")
    # The listing names the most recently active first, by the millisecond: second-co's enqueue
    # comes in a later one (in the same one the order is the ids')
    stats_last = timefmt.now_ms()
    wait_until(lambda: timefmt.now_ms() > stats_last, timeout_s=1, what="the next millisecond")
    enqueue_for(api, "second-co")
    (done,) = fetch_as(api, "stats-co", count=1)
    assert api.http.post("/ojs/v1/workers/ack", json={"job_id": done["id"]}).status_code == 200
    (running,) = fetch_as(api, "stats-co", count=1)
    stats = api.http.get("/ojs/v1/admin/tenants/stats-co/stats").json()
    assert stats["tenant_id"] == "stats-co" and stats["total_jobs"] == 4
    assert stats["unfinished_jobs"] == 3
    assert stats["jobs"]["available"] == 2 and stats["jobs"]["active"] == 1
    assert stats["ended"]["completed"] == 1
    assert api.http.get("/ojs/v1/admin/tenants/stats-co").json()["tenant"]["total_jobs"] == 4
    assert_error(api.http.get("/ojs/v1/admin/tenants/never-seen/stats"), 404)
    listing = api.http.get("/ojs/v1/admin/tenants").json()
    assert [t["tenant_id"] for t in listing["tenants"]] == ["second-co", "stats-co"]
    assert listing["pagination"]["total"] == 2
    assert [t["tenant_id"] for t in api.http.get("/ojs/v1/admin/tenants", params={"limit": 1, "offset": 1})
            .json()["tenants"]] == ["stats-co"]
    assert api.http.post("/ojs/v1/workers/ack", json={"job_id": running["id"]}).status_code == 200


def test_the_queue_view_with_a_tenant_counts_only_that_tenants_jobs(api: Api) -> None:
    enqueue_for(api, "alpha")
    enqueue_for(api, "alpha")
    enqueue_for(api, "beta")
    everyone = api.http.get("/ojs/v1/queues/mt").json()["queue"]
    assert everyone["name"] == "mt" and everyone["available"] == 3
    alpha = api.http.get("/ojs/v1/queues/mt", headers=as_tenant("alpha")).json()["queue"]
    assert alpha["name"] == "mt" and alpha["tenant_id"] == "alpha"
    assert alpha["available"] == 2 and alpha["depth"] == 2
    assert api.http.get("/ojs/v1/queues/mt", headers=as_tenant("gamma")).json()["queue"]["available"] == 0
