"""Admin queue endpoints and the backpressure bound, over HTTP on a real server."""

from __future__ import annotations

import pytest

from tests.admin.conftest import Api, assert_error


def test_queue_list_and_detail_carry_counts_config_and_the_oldest_available_job(api: Api) -> None:
    api.enqueue("mail.send", [], queue="q-a")
    api.enqueue("mail.send", [], queue="q-a")
    api.enqueue("mail.send", [], queue="q-b")
    api.complete("q-b", 1)
    listing = api.http.get("/ojs/v1/admin/queues").json()
    assert [q["name"] for q in listing["items"]] == ["q-a", "q-b"]
    assert listing["pagination"] == {"total": 2, "page": 1, "per_page": 20, "has_more": False, "next_cursor": None}
    a, b = listing["items"]
    assert a["counts"]["available"] == 2 and a["depth"] == 2 and a["state"] == "active"
    assert a["oldest_available_at"] is not None and b["oldest_available_at"] is None
    assert b["counts"]["completed"] == 1
    second_page = api.http.get("/ojs/v1/admin/queues", params={"per_page": 1, "page": 2}).json()
    assert [q["name"] for q in second_page["items"]] == ["q-b"]
    detail = api.http.get("/ojs/v1/admin/queues/q-a").json()
    assert detail["name"] == "q-a" and detail["configuration"]["backpressure"] is None
    assert_error(api.http.get("/ojs/v1/admin/queues/nope"), 404)
    assert_error(api.http.get("/ojs/v1/admin/queues/Bad_Name"), 400)


def test_pause_stops_fetches_and_resume_brings_them_back(api: Api) -> None:
    api.enqueue("mail.send", [], queue="q-p")
    paused = api.http.post("/ojs/v1/admin/queues/q-p/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert paused.json()["queue"]["state"] == "paused"
    assert api.fetch("q-p") == []
    resumed = api.http.post("/ojs/v1/admin/queues/q-p/resume").json()
    assert resumed["paused"] is False
    assert len(api.fetch("q-p")) == 1


def test_a_max_depth_bound_refuses_what_does_not_fit_with_429_and_its_headers(api: Api) -> None:
    config = api.http.put("/ojs/v1/admin/queues/q-bp/config",
                          json={"backpressure": {"max_depth": 3, "warning_threshold": 0.5}})
    assert config.status_code == 200, config.text
    assert config.json()["configuration"]["backpressure"] == {"max_depth": 3, "strategy": "reject",
                                                              "warning_threshold": 0.5}
    first = api.http.post("/ojs/v1/jobs", json={"type": "t.x", "args": [], "options": {"queue": "q-bp"}})
    assert first.status_code == 201 and "x-ojs-queue-pressure" not in first.headers
    second = api.http.post("/ojs/v1/jobs", json={"type": "t.x", "args": [], "options": {"queue": "q-bp"}})
    assert second.headers["x-ojs-queue-depth"] == "2" and second.headers["x-ojs-queue-bound"] == "3"
    assert float(second.headers["x-ojs-queue-pressure"]) == pytest.approx(0.67)
    # a batch that does not fit is refused whole: nothing of it is enqueued
    batch = [{"type": "t.x", "args": [n], "options": {"queue": "q-bp"}} for n in range(2)]
    refused = api.http.post("/ojs/v1/jobs/batch", json={"jobs": batch})
    error = assert_error(refused, 429)
    assert error["code"] == "QUEUE_FULL" and error["retryable"] is True
    assert refused.headers["retry-after"] and refused.headers["x-ojs-queue-depth"] == "2"
    assert api.http.get("/ojs/v1/admin/queues/q-bp").json()["counts"]["available"] == 2
    # a job that leaves the queue makes room; a lifted bound takes everything
    api.complete("q-bp", 1)
    assert api.http.post("/ojs/v1/jobs/batch", json={"jobs": batch[:1]}).status_code == 201
    assert api.http.put("/ojs/v1/admin/queues/q-bp/config", json={"backpressure": None}).status_code == 200
    assert api.http.post("/ojs/v1/jobs/batch", json={"jobs": batch}).status_code == 201


def test_queue_config_sets_and_clears_a_rate_limit(api: Api) -> None:
    reply = api.http.put("/ojs/v1/admin/queues/q-rl/config", json={"rate_limit": {"limit": 2, "period": "PT1M"}})
    assert reply.json()["configuration"]["rate_limit"] == {"limit": 2, "period": "PT1M", "window_ms": 60_000}
    for _ in range(3):
        api.enqueue("t.x", [], queue="q-rl")
    assert len(api.fetch("q-rl", 3)) == 2  # the window's budget
    cleared = api.http.put("/ojs/v1/admin/queues/q-rl/config", json={"rate_limit": None}).json()
    assert cleared["configuration"]["rate_limit"] is None
    assert len(api.fetch("q-rl", 3)) == 1


def test_bad_queue_config_gets_a_4xx_and_changes_nothing(api: Api) -> None:
    path = "/ojs/v1/admin/queues/q-c/config"
    assert_error(api.http.put(path, json={"backpressure": {"max_depth": -1}}), 400)
    assert_error(api.http.put(path, json={"backpressure": {"max_depth": 5, "strategy": "block"}}), 422)
    assert_error(api.http.put(path, json={"backpressure": {"max_depth": 5, "warning_threshold": 2}}), 400)
    assert_error(api.http.put(path, json={"rate_limit": {"limit": 0}}), 400)
    assert_error(api.http.put(path, json={"rate_limit": {"limit": 1, "period": "soon"}}), 400)
    assert_error(api.http.put(path, json={"colour": "red"}), 400)
    assert_error(api.http.put(path, content=b"{not json"), 400)
    assert api.http.put(path, json={}).json()["configuration"]["backpressure"] is None


@pytest.mark.parametrize("states", [["completed", "completed"], ["completed"] * 5_000, ["completed", "running"]])
def test_a_purge_names_each_ended_state_at_most_once(api: Api, states: list[str]) -> None:
    """A request cannot multiply the work of one call by repeating a state."""
    reply = api.http.request("DELETE", "/ojs/v1/admin/queues/default/jobs", json={"states": states, "confirm": True})
    assert_error(reply, 400)
