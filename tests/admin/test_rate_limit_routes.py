"""The rate-limiting extension over HTTP (inspect, list, override, the queue-level form) and the
priority update, against a real server: what a worker fetches, and bad input answered 4xx."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import timefmt
from tests.admin.conftest import Api, assert_error


def keyed(api: Api, key: str, queue: str = "rlq", **policy: Any) -> str:
    return api.enqueue("t.rl", queue=queue, rate_limit={"key": key, **policy})


def test_a_fetch_gets_at_most_the_keys_concurrency_and_inspection_shows_it(api: Api) -> None:
    first = keyed(api, "partner-api", concurrency=1)
    keyed(api, "partner-api", concurrency=1)
    assert [j["id"] for j in api.fetch("rlq", count=2, worker_id="w")] == [first]
    view = api.http.get("/ojs/v1/rate-limits/partner-api").json()
    assert view["key"] == "partner-api"
    assert view["concurrency"] == {"limit": 1, "active": 1, "available": 0}
    assert view["waiting_count"] == 1
    assert api.http.post("/ojs/v1/workers/ack", json={"job_id": first}).status_code == 200
    assert len(api.fetch("rlq", count=2, worker_id="w")) == 1


def test_an_unknown_key_is_inspected_as_empty_and_a_malformed_one_is_refused(api: Api) -> None:
    reply = api.http.get("/ojs/v1/rate-limits/never-seen")
    assert reply.status_code == 200 and reply.json() == {"key": "never-seen", "active": 0, "waiting_count": 0}
    assert_error(api.http.get("/ojs/v1/rate-limits/-starts-with-a-dash"), 400)
    assert_error(api.http.get("/ojs/v1/rate-limits/" + "k" * 300), 400)


def test_the_listing_pages_through_the_keys_newest_first(api: Api) -> None:
    for key in ("k-a", "k-b", "k-c"):
        keyed(api, key, concurrency=2)
    page = api.http.get("/ojs/v1/rate-limits", params={"per_page": 2}).json()
    assert [i["key"] for i in page["items"]] == ["k-c", "k-b"]
    assert page["pagination"] == {"total": 3, "page": 1, "per_page": 2}
    rest = api.http.get("/ojs/v1/rate-limits", params={"per_page": 2, "page": 2}).json()
    assert [i["key"] for i in rest["items"]] == ["k-a"]
    assert_error(api.http.get("/ojs/v1/rate-limits", params={"per_page": 1000}), 400)


def test_an_override_to_zero_stops_the_key_and_clear_restarts_it(api: Api) -> None:
    job = keyed(api, "flaky-api")
    until = timefmt.format_ms(timefmt.now_ms() + 3_600_000)
    reply = api.http.put("/ojs/v1/rate-limits/flaky-api", json={"concurrency": 0, "expires_at": until})
    assert reply.status_code == 200, reply.text
    assert reply.json()["override"]["concurrency"] == 0
    assert api.fetch("rlq", worker_id="w") == []
    assert api.http.put("/ojs/v1/rate-limits/flaky-api", json={"clear": True}).status_code == 200
    assert [j["id"] for j in api.fetch("rlq", worker_id="w")] == [job]


@pytest.mark.parametrize("body", [
    {"concurrency": 0}, {"concurrency": -1, "expires_at": "2999-01-01T00:00:00Z"},
    {"concurrency": 1, "expires_at": "2000-01-01T00:00:00Z"}, {"concurrency": 1, "expires_at": "tomorrow"},
    {"limit": 3}, [], "x",
])
def test_a_bad_override_is_refused(api: Api, body: Any) -> None:
    assert_error(api.http.put("/ojs/v1/rate-limits/some-key", json=body), 400)


@pytest.mark.parametrize("policy", [
    {"key": "has space", "concurrency": 1}, {"key": "k", "concurrency": 1.5}, {"key": "k", "on_limit": "later"},
    {"key": "k", "rate": {"limit": 1, "period": "fortnight"}}, {"key": "k", "unknown": 1},
])
def test_an_enqueue_with_a_bad_policy_gets_400_and_nothing_is_stored(api: Api, policy: dict[str, Any]) -> None:
    reply = api.http.post("/ojs/v1/jobs", json={"type": "t.rl", "args": [], "options": {"queue": "bad-rl",
                                                                                        "rate_limit": policy}})
    assert_error(reply, 400)
    assert api.fetch("bad-rl") == []


def test_queue_level_concurrency_through_the_rate_limit_route(api: Api) -> None:
    reply = api.http.put("/ojs/v1/admin/queues/capped/rate-limit", json={"concurrency": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["concurrency"] == 1
    for _ in range(3):
        api.enqueue("t.x", queue="capped")
    assert len(api.fetch("capped", count=3, worker_id="a")) == 1
    assert api.fetch("capped", count=3, worker_id="b") == []
    detail = api.http.get("/ojs/v1/admin/queues/capped").json()
    assert detail["configuration"]["concurrency"] == 1
    assert_error(api.http.put("/ojs/v1/admin/queues/capped/rate-limit", json={"concurrency": -2}), 400)
    assert api.http.put("/ojs/v1/admin/queues/capped/rate-limit", json={"concurrency": None}).status_code == 200
    assert len(api.fetch("capped", count=3, worker_id="b")) == 2


def test_a_waiting_jobs_priority_changes_its_place_and_a_running_ones_cannot(api: Api) -> None:
    low = api.enqueue("t.p", queue="prio")
    high = api.enqueue("t.p", queue="prio")
    reply = api.http.patch(f"/ojs/v1/jobs/{high}", json={"priority": 50})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"id": high, "priority": 50, "previous_priority": 0}
    (first,) = api.fetch("prio", worker_id="w")
    assert first["id"] == high and first["priority"] == 50
    assert_error(api.http.patch(f"/ojs/v1/jobs/{high}", json={"priority": 1}), 409)
    assert_error(api.http.patch(f"/ojs/v1/jobs/{low}", json={"priority": 101}), 400)
    assert_error(api.http.patch(f"/ojs/v1/jobs/{low}", json={"prio": 1}), 400)
    assert_error(api.http.patch("/ojs/v1/jobs/0190aaaa-0000-7000-8000-000000000000", json={"priority": 1}), 404)
    assert api.http.patch(f"/ojs/v1/jobs/{low}", json={"priority": "HIGH"}).json()["priority"] == 10


def test_a_window_override_as_the_admin_ui_sends_it_and_its_delete(api: Api) -> None:
    first = keyed(api, "ui-key", concurrency=10)
    second = keyed(api, "ui-key", concurrency=10)
    until = timefmt.format_ms(timefmt.now_ms() + 3_600_000)
    reply = api.http.put("/ojs/v1/rate-limits/ui-key", json={"limit": 1, "period": "PT1H", "expires_at": until})
    assert reply.status_code == 200, reply.text
    view = reply.json()
    assert view["override"] == {"expires_at": until, "limit": 1, "period": "PT1H"}
    assert (view["limit"], view["period"], view["waiting"]) == (1, "PT1H", 2)
    assert [j["id"] for j in api.fetch("rlq", count=2, worker_id="w")] == [first]  # one start per hour
    reply = api.http.delete("/ojs/v1/rate-limits/ui-key/override")
    assert reply.status_code == 204
    assert [j["id"] for j in api.fetch("rlq", count=2, worker_id="w")] == [second]


def test_the_plural_cron_routes_read_patch_and_delete(api: Api) -> None:
    body = {"name": "nightly-report", "expression": "0 3 * * *", "job_template": {"type": "report.build"}}
    assert api.http.post("/ojs/v1/cron", json=body).status_code == 201
    assert api.http.get("/ojs/v1/crons/nightly-report").json()["cron"]["name"] == "nightly-report"
    assert api.http.patch("/ojs/v1/crons/nightly-report", json={"enabled": False}).status_code == 200
    assert api.http.delete("/ojs/v1/crons/nightly-report").status_code in (200, 204)
    assert_error(api.http.get("/ojs/v1/crons/nightly-report"), 404)
