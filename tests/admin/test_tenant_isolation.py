"""Tenant isolation on every route that names a job: settling, dead letters, unique locks; and
bad input on the tenancy routes answered 4xx."""
from __future__ import annotations

from tests.admin.conftest import Api
from tests.admin.test_tenancy_routes import as_tenant, enqueue_for, fetch_as


def test_another_tenant_cannot_settle_a_tenants_running_job(api: Api) -> None:
    # Given: tenant-a's two jobs, running (claimed by tenant-a's worker)
    one = enqueue_for(api, "tenant-a")
    two = enqueue_for(api, "tenant-a")
    assert {j["id"] for j in fetch_as(api, "tenant-a")} == {one["id"], two["id"]}
    # When: tenant-b acks one and nacks the other, by the path forms and the body forms
    acked = api.http.post(f"/ojs/v1/jobs/{one['id']}/ack", json={}, headers=as_tenant("tenant-b"))
    nacked = api.http.post("/ojs/v1/workers/nack", json={"job_id": two["id"], "error": "x"},
                           headers=as_tenant("tenant-b"))
    # Then: both are "not found" for it (as for reads, cancels and priority changes)
    print(acked.status_code, acked.text[:200], nacked.status_code, nacked.text[:200])
    assert acked.status_code == 404 and nacked.status_code == 404


def test_another_tenant_cannot_retry_or_delete_a_tenants_dead_letter_job(api: Api) -> None:
    job = enqueue_for(api, "tenant-a", options={"queue": "mt", "retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}})
    (got,) = fetch_as(api, "tenant-a")
    assert api.http.post("/ojs/v1/workers/nack", json={"job_id": got["id"], "error": "x"},
                         headers=as_tenant("tenant-a")).status_code == 200
    listing = api.http.get("/ojs/v1/dead-letter", headers=as_tenant("tenant-b"))
    print(listing.status_code, listing.text[:300])
    retried = api.http.post(f"/ojs/v1/dead-letter/{job['id']}/retry", headers=as_tenant("tenant-b"))
    print(retried.status_code, retried.text[:200])
    assert job["id"] not in listing.text
    assert retried.status_code == 404


def test_bad_inputs_never_500(api: Api) -> None:
    job = enqueue_for(api, "tenant-a")
    jid = job["id"]
    cases = [
        ("post", f"/ojs/v1/jobs/{jid}/ack", b"[]"),
        ("post", f"/ojs/v1/jobs/{jid}/ack", b"null"),
        ("post", f"/ojs/v1/jobs/{jid}/ack", b"\"x\""),
        ("post", f"/ojs/v1/jobs/{jid}/ack", b"{\"result\": }"),
        ("post", f"/ojs/v1/jobs/{jid}/nack", b"{\"error\": 5}"),
        ("post", f"/ojs/v1/jobs/{jid}/nack", b"{\"error\": {\"message\": 5}}"),
        ("post", f"/ojs/v1/jobs/{jid}/nack", b"{\"error\": []}"),
        ("post", f"/ojs/v1/jobs/{'x' * 300}/ack", b"{}"),
        ("post", f"/ojs/v1/jobs/{'x' * 300}/nack", b"{}"),
        ("post", "/ojs/v1/jobs/%FF%FE/nack", b"{}"),
        ("post", f"/ojs/v1/jobs/{jid}/ack", b"{\"job_id\": \"\"}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"versions\": {\"t.mt\": \"\"}}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"versions\": {\"t.mt\": \">=1.0 <\"}}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"versions\": {\"t.mt\": \">=1..0\"}}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"versions\": {\"t.mt\": \",\"}}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"handlers\": [{\"type\": \"t.mt\", \"versions\": \"1-\"}]}"),
        ("post", "/ojs/v1/workers/fetch", b"{\"queues\": [\"mt\"], \"handlers\": [{\"type\": \"t.mt\"}]}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt@1.0\", \"args\": [], \"version\": \"2.0\"}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt@9999999999999999999999999\", \"args\": []}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"version\": 99999999999999999999}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"version\": -1}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"version\": 1.5}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"meta\": {\"tenant_id\": \"\"}}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"meta\": {\"tenant_id\": null}}"),
        ("post", "/ojs/v1/jobs", b"{\"type\": \"t.mt\", \"args\": [], \"meta\": {\"tenant_id\": [\"a\"]}}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c1\", \"expression\": \"* * * * *\", \"type\": \"t.c\", \"queue\": 5}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c2\", \"expression\": \"* * * * *\", \"type\": \"t.c\", \"options\": 5}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c3\", \"expression\": \"* * * * *\", \"job_template\": {\"type\": \"t.c\", \"options\": [1]}}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c4\", \"expression\": \"* * * * *\", \"job_template\": {\"type\": \"t.c\", \"queue\": [1], \"options\": {\"queue\": \"x\"}}}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c5\", \"expression\": \"* * * * *\", \"type\": \"t.c\", \"meta\": {\"tenant_id\": 5}}"),
        ("post", "/ojs/v1/cron", b"{\"name\": \"c6\", \"expression\": \"* * * * *\", \"type\": \"t.c\", \"priority\": {\"a\": 1}, \"options\": {\"priority\": 3}}"),
        ("post", "/ojs/v1/workers/progress", b"{\"job_id\": \"x\", \"percentage\": 50}"),
        ("post", "/ojs/v1/workers/progress", b"{\"job_id\": \"x\", \"percentage\": 50, \"progress\": 0.1}"),
        ("patch", f"/ojs/v1/jobs/{jid}", b"{\"priority\": 1e300}"),
        ("get", "/ojs/v1/admin/tenants/%20x/stats", None),
        ("get", "/ojs/v1/admin/tenants?limit=0", None),
        ("get", "/ojs/v1/queues/MT", None),
    ]
    bad = []
    for method, path, data in cases:
        headers = {"content-type": "application/json"}
        reply = getattr(api.http, method)(path, content=data, headers=headers) if data is not None else getattr(api.http, method)(path)
        print(reply.status_code, method, path[:60], (data or b"")[:80], reply.text[:160])
        if reply.status_code >= 500:
            bad.append((path, data, reply.status_code, reply.text[:300]))
    assert not bad, bad


def test_another_tenants_unique_enqueue_neither_sees_nor_replaces_a_tenants_job(api: Api) -> None:
    secret = {"type": "t.uniq", "args": ["a's secret"], "options": {"queue": "mt"}, "unique": {"keys": ["type"]}}
    a = api.http.post("/ojs/v1/jobs", json=secret, headers=as_tenant("tenant-a"))
    assert a.status_code == 201, a.text
    a_id = a.json()["job"]["id"]
    # tenant-b enqueues "its own" job of that type, ignore on conflict: it is handed a's job
    ignored = api.http.post("/ojs/v1/jobs", headers=as_tenant("tenant-b"), json={
        "type": "t.uniq", "args": ["b"], "options": {"queue": "mt"}, "unique": {"keys": ["type"], "on_conflict": "ignore"}})
    print(ignored.status_code, ignored.text[:300])
    # replace on conflict: a's job is cancelled by tenant-b
    replaced = api.http.post("/ojs/v1/jobs", headers=as_tenant("tenant-b"), json={
        "type": "t.uniq", "args": ["b"], "options": {"queue": "mt"}, "unique": {"keys": ["type"], "on_conflict": "replace"}})
    print(replaced.status_code, replaced.text[:200])
    a_state = api.http.get(f"/ojs/v1/jobs/{a_id}", headers=as_tenant("tenant-a")).json()["job"]["state"]
    print("a's job:", a_state)
    assert "a's secret" not in ignored.text
    assert a_state == "available"


def test_a_tenants_workflow_is_the_tenants_and_hidden_from_another(api: Api) -> None:
    body = {"type": "chain", "steps": [{"type": "t.one", "args": [], "options": {"queue": "mtw"}},
                                       {"type": "t.two", "args": [], "options": {"queue": "mtw"}}]}
    reply = api.http.post("/ojs/v1/workflows", json=body, headers=as_tenant("tenant-a"))
    assert reply.status_code == 201, reply.text
    workflow_id = reply.json()["workflow"]["id"]
    (first,) = fetch_as(api, "tenant-a", queue="mtw")
    assert first["meta"]["tenant_id"] == "tenant-a"
    assert fetch_as(api, "tenant-b", queue="mtw") == []
    for call in (api.http.get, api.http.delete):
        hidden = call(f"/ojs/v1/workflows/{workflow_id}", headers=as_tenant("tenant-b"))
        assert hidden.status_code == 404 and first["id"] not in hidden.text
    assert api.http.get(f"/ojs/v1/workflows/{workflow_id}", headers=as_tenant("tenant-a")).status_code == 200
    mixed = {"type": "group", "jobs": [{"type": "t.x", "args": [], "meta": {"tenant_id": "tenant-b"}}]}
    refused = api.http.post("/ojs/v1/workflows", json=mixed, headers=as_tenant("tenant-a"))
    assert refused.status_code == 400, refused.text
    assert api.http.post(f"/ojs/v1/jobs/{first['id']}/ack", json={}, headers=as_tenant("tenant-a")).status_code == 200
