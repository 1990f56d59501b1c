"""The admin job listing, detail and the operator's actions on jobs, over HTTP on a real server."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from runtime import timefmt
from tests.admin.conftest import Api, assert_error

Q = "adm"


def _mixed_queue(api: Api) -> dict[str, list[str]]:
    """A queue with jobs in every listed state: 2 active, 3 available, 2 completed, 2 discarded,
    1 cancelled, 1 scheduled."""
    ids = [api.enqueue("mail.send", [n], queue=Q, retry={"max_attempts": 1}) for n in range(10)]
    completed = api.complete(Q, 2)
    discarded = api.fail(Q, 2)
    active = [job["id"] for job in api.fetch(Q, 2, worker_id="w-1")]
    cancelled = ids[9]
    assert api.http.delete(f"/ojs/v1/jobs/{cancelled}").status_code == 200
    scheduled = api.enqueue("report.build", [], queue=Q, delay_until="2099-01-01T00:00:00Z")
    taken = {*completed, *discarded, *active, cancelled}
    return {"active": active, "available": [i for i in ids if i not in taken], "completed": completed,
            "discarded": discarded, "cancelled": [cancelled], "scheduled": [scheduled]}


def _list(api: Api, **query: Any) -> dict[str, Any]:
    reply = api.http.get("/ojs/v1/admin/jobs", params=query)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_each_state_lists_its_jobs_with_an_exact_total(api: Api) -> None:
    made = _mixed_queue(api)
    for state, ids in made.items():
        page = _list(api, queue=Q, state=state, per_page=100)
        assert sorted(item["id"] for item in page["items"]) == sorted(ids), state
        assert page["pagination"]["total"] == len(ids), state
        assert {item["state"] for item in page["items"]} <= {state}
    # ended jobs come newest first, and carry their end time and error
    discarded = _list(api, queue=Q, state="discarded")["items"]
    assert [d["id"] for d in discarded] == sorted(made["discarded"], key=made["discarded"].index, reverse=True)
    assert discarded[0]["error"] == {"type": "boom", "message": "boom happened"}
    assert "discarded_at" in discarded[0]


def test_a_cursor_walks_every_job_exactly_once_across_states_and_queues(api: Api) -> None:
    made = _mixed_queue(api)
    other = [api.enqueue("mail.send", [], queue="adm-b") for _ in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        page = _list(api, per_page=2, **({"cursor": cursor} if cursor else {}))
        seen += [item["id"] for item in page["items"]]
        cursor = page["pagination"]["next_cursor"]
        if cursor is None:
            break
    everything = [i for ids in made.values() for i in ids] + other
    assert sorted(seen) == sorted(everything)
    assert len(seen) == len(set(seen))


def test_filters_narrow_the_listing(api: Api) -> None:
    api.enqueue("mail.send", [{"to": "ann@example.com"}], queue=Q)
    api.enqueue("mail.digest", [{"to": "bob@example.com"}], queue=Q)
    api.enqueue("report.build", [{"for": "ann"}], queue=Q, meta={"team": "finance"})
    by_prefix = _list(api, type="mail.*")["items"]
    assert sorted(i["type"] for i in by_prefix) == ["mail.digest", "mail.send"]
    assert [i["type"] for i in _list(api, type="mail.send")["items"]] == ["mail.send"]
    assert sorted(i["type"] for i in _list(api, q="ann")["items"]) == ["mail.send", "report.build"]
    assert [i["type"] for i in _list(api, q="finance")["items"]] == ["report.build"]
    assert _list(api, since="2099-01-01T00:00:00Z")["items"] == []
    assert len(_list(api, until="2099-01-01T00:00:00Z")["items"]) == 3
    filtered = _list(api, q="ann")
    assert filtered["pagination"]["total"] is None  # a refined listing does not claim a total


def test_error_type_and_worker_filters(api: Api) -> None:
    ids = [api.enqueue("mail.send", [], queue=Q, retry={"max_attempts": 1}) for _ in range(3)]
    api.fail(Q, 1, "smtp_down")
    api.fail(Q, 1, "bad_address")
    held = api.fetch(Q, 1, worker_id="worker-7")
    assert [i["id"] for i in _list(api, error_type="smtp_down")["items"]] == [ids[0]]
    assert [i["id"] for i in _list(api, worker="worker-7")["items"]] == [held[0]["id"]]


def test_bad_listing_queries_get_a_400_with_the_error_body(api: Api) -> None:
    for query in ({"state": "bogus"}, {"per_page": "0"}, {"per_page": "101"}, {"cursor": "not-a-cursor"},
                  {"since": "yesterday"}, {"queue": "Bad Queue"}, {"order": "sideways"}, {"page": "0"},
                  {"q": "x" * 1000}, {"state": "pending"}):
        assert_error(api.http.get("/ojs/v1/admin/jobs", params=query), 400)


def test_detail_is_the_whole_envelope_unwrapped(api: Api) -> None:
    job_id = api.enqueue("mail.send", ["a"], queue=Q, retry={"max_attempts": 1})
    api.fail(Q, 1)
    detail = api.http.get(f"/ojs/v1/admin/jobs/{job_id}").json()
    assert detail["id"] == job_id and detail["type"] == "mail.send" and detail["args"] == ["a"]
    assert detail["state"] == "discarded"
    assert detail["errors"][0]["type"] == "boom"
    assert_error(api.http.get("/ojs/v1/admin/jobs/missing"), 404)


def test_retry_brings_a_discarded_or_cancelled_job_back_with_fresh_attempts(api: Api) -> None:
    failed = api.enqueue("mail.send", [], queue=Q, retry={"max_attempts": 1})
    api.fail(Q, 1)
    cancelled = api.enqueue("mail.send", [], queue=Q)
    api.http.delete(f"/ojs/v1/jobs/{cancelled}")
    for job_id in (failed, cancelled):
        reply = api.http.post(f"/ojs/v1/admin/jobs/{job_id}/retry")
        assert reply.status_code == 200, reply.text
        assert reply.json()["job"]["state"] == "available" and reply.json()["job"]["attempt"] == 0
    assert sorted(j["id"] for j in api.fetch(Q, 5)) == sorted([failed, cancelled])
    live = api.enqueue("mail.send", [], queue=Q)
    assert_error(api.http.post(f"/ojs/v1/admin/jobs/{live}/retry"), 409)


def test_delete_removes_an_ended_job_and_refuses_a_live_one(api: Api, store: redis.Redis) -> None:
    done = api.enqueue("mail.send", [], queue=Q)
    api.complete(Q, 1)
    live = api.enqueue("mail.send", [], queue=Q)
    assert api.http.delete(f"/ojs/v1/admin/jobs/{done}").status_code == 200
    assert not store.exists(f"{{ojs}}:job:{done}")
    assert store.hget(f"{{ojs}}:queue:{Q}:counts", "completed") == b"0"
    assert_error(api.http.delete(f"/ojs/v1/admin/jobs/{live}"), 409)
    assert api.state(live) == "available"


def test_bulk_actions_need_confirm_and_a_dry_run_changes_nothing(api: Api) -> None:
    ids = [api.enqueue("mail.send", [], queue=Q) for _ in range(3)]
    body = {"filter": {"queue": Q, "state": "available"}}
    assert_error(api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json=body), 400)
    assert_error(api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json={**body, "confirm": False}), 400)
    assert_error(api.http.post("/ojs/v1/admin/jobs/bulk/explode", json={**body, "confirm": True}), 404)
    assert_error(api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json={"confirm": True}), 400)
    dry = api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json={**body, "dry_run": True}).json()
    assert dry["matched"] == 3 and sorted(dry["job_ids"]) == sorted(ids) and dry["succeeded"] == 0
    assert {api.state(i) for i in ids} == {"available"}


def test_bulk_cancel_by_filter_takes_effect_and_is_safe_to_repeat(api: Api) -> None:
    keep = api.enqueue("mail.digest", [], queue=Q)
    ids = [api.enqueue("mail.send", [], queue=Q) for _ in range(4)]
    body = {"filter": {"queue": Q, "state": "available", "type": "mail.send"}, "confirm": True}
    first = api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json=body).json()
    assert (first["matched"], first["succeeded"], first["failed"]) == (4, 4, 0)
    assert {api.state(i) for i in ids} == {"cancelled"} and api.state(keep) == "available"
    again = api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json=body).json()
    assert (again["matched"], again["succeeded"]) == (0, 0)


def test_bulk_retry_by_ids_reports_each_job_it_could_not_retry(api: Api) -> None:
    failed = [api.enqueue("mail.send", [], queue=Q, retry={"max_attempts": 1}) for _ in range(2)]
    api.fail(Q, 2)
    live = api.enqueue("mail.send", [], queue=Q)
    reply = api.http.post("/ojs/v1/admin/jobs/bulk/retry", json={"ids": [*failed, live, "missing"], "confirm": True})
    result = reply.json()
    assert (result["matched"], result["succeeded"], result["failed"]) == (4, 2, 2)
    assert sorted(e["job_id"] for e in result["errors"]) == sorted([live, "missing"])
    assert {api.state(i) for i in failed} == {"available"}


def test_bulk_by_ids_past_its_limit_goes_on_from_its_cursor(api: Api) -> None:
    ids = [api.enqueue("mail.send", [], queue=Q) for _ in range(5)]
    body: dict[str, Any] = {"ids": ids, "confirm": True, "limit": 2}
    done: list[int] = []
    for _ in range(5):  # 3 calls: 2 + 2 + 1
        result = api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json=body).json()
        done.append(result["succeeded"])
        if not result["has_more"]:
            break
        body["cursor"] = result["next_cursor"]
    assert done == [2, 2, 1] and result["next_cursor"] is None
    assert {api.state(i) for i in ids} == {"cancelled"}
    for forged in ("ids:0", "ids:5", "ids:x", "2"):
        assert_error(api.http.post("/ojs/v1/admin/jobs/bulk/cancel", json={**body, "cursor": forged}), 400)


def test_bulk_delete_by_filter_removes_only_ended_jobs_in_pages(api: Api, store: redis.Redis) -> None:
    for _ in range(5):
        api.enqueue("mail.send", [], queue=Q)
    done = api.complete(Q, 3)
    body = {"filter": {"queue": Q, "state": "completed"}, "confirm": True, "limit": 2}
    first = api.http.post("/ojs/v1/admin/jobs/bulk/delete", json=body).json()
    assert (first["succeeded"], first["has_more"]) == (2, True)
    second = api.http.post("/ojs/v1/admin/jobs/bulk/delete", json=body).json()
    assert second["succeeded"] == 1
    assert not any(store.exists(f"{{ojs}}:job:{i}") for i in done)
    assert _list(api, queue=Q, state="available")["pagination"]["total"] == 2
    live = _list(api, queue=Q, state="available")["items"][0]["id"]
    refused = api.http.post("/ojs/v1/admin/jobs/bulk/delete", json={"ids": [live], "confirm": True}).json()
    assert refused["failed"] == 1 and api.state(live) == "available"


def test_purge_deletes_a_queues_ended_jobs_older_than_given(api: Api) -> None:
    for _ in range(3):
        api.enqueue("mail.send", [], queue=Q)
    api.complete(Q, 3)
    path = f"/ojs/v1/admin/queues/{Q}/jobs"
    assert_error(api.http.request("DELETE", path, json={"states": ["completed"]}), 400)
    assert_error(api.http.request("DELETE", path, json={"states": ["available"], "confirm": True}), 400)
    none = api.http.request("DELETE", path, json={"states": ["completed"], "older_than": "2000-01-01T00:00:00Z",
                                                  "confirm": True}).json()
    assert none["purged_count"] == 0
    purged = api.http.request("DELETE", path, json={"states": ["completed"], "confirm": True}).json()
    assert (purged["purged_count"], purged["has_more"], purged["next_cursor"]) == (3, False, None)
    assert _list(api, queue=Q, state="completed")["items"] == []


@pytest.mark.parametrize("cursor", ["[1,0,0]", "[0,0,-1]", "[0,-5,0]", "[-1,0,0]", "[0,1]", "nonsense",
                                    '["a",0,0]', '["a",-1,0]', "[0]"])
def test_a_purge_refuses_a_cursor_it_did_not_make(api: Api, cursor: str) -> None:
    # (one state asked: a cursor can only name state 0, and never a negative time or count)
    path = f"/ojs/v1/admin/queues/{Q}/jobs"
    assert_error(api.http.request("DELETE", path, json={"states": ["completed"], "confirm": True,
                                                        "cursor": cursor}), 400)
    if cursor != '["a",0,0]':  # a dead letter purge's cursor names a queue
        assert_error(api.http.request("DELETE", "/ojs/v1/admin/dead-letter", json={"confirm": True, "cursor": cursor}),
                     400)


def test_a_purge_resumes_from_its_cursors_millisecond(api: Api) -> None:
    for _ in range(2):
        api.enqueue("mail.send", [], queue=Q)
    api.complete(Q, 2)
    path = f"/ojs/v1/admin/queues/{Q}/jobs"
    # A cursor past every job's end: nothing from there on
    later = timefmt.now_ms() + 86_400_000
    purged = api.http.request("DELETE", path, json={"states": ["completed"], "confirm": True,
                                                    "cursor": f"[0,{later},0]"}).json()
    assert (purged["purged_count"], purged["has_more"], purged["next_cursor"]) == (0, False, None)
    assert len(_list(api, queue=Q, state="completed")["items"]) == 2
    # One at the start: all of them
    purged = api.http.request("DELETE", path, json={"states": ["completed"], "confirm": True,
                                                    "cursor": "[0,0,0]"}).json()
    assert purged["purged_count"] == 2


def test_a_far_page_of_a_listing_that_matches_little_is_refused_not_walked(api: Api) -> None:
    for _ in range(3):
        body = {"jobs": [{"type": "mail.send", "args": [], "options": {"queue": Q}} for _ in range(1000)]}
        assert api.http.post("/ojs/v1/jobs/batch", json=body).status_code == 201
    for _ in range(2):
        for job in api.fetch(Q, 1000):
            api.http.post("/ojs/v1/workers/ack", json={"job_id": job["id"]})
    # No job matches: page 2 would read through every index. Far pages are bounded instead.
    reply = api.http.get("/ojs/v1/admin/jobs", params={"type": "nomatch", "page": 2, "per_page": 100})
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 200:
        assert reply.json()["items"] == []
    else:
        assert_error(reply, 400)


def test_the_last_page_reached_by_cursor_says_no_more(api: Api) -> None:
    for _ in range(5):
        api.enqueue("mail.send", [], queue="paged")
    cursor, pages = None, []
    while True:
        params = {"queue": "paged", "state": "available", "per_page": 2, **({"cursor": cursor} if cursor else {})}
        reply = api.http.get("/ojs/v1/admin/jobs", params=params)
        assert reply.status_code == 200, reply.text
        pages.append(reply.json()["pagination"])
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            break
    assert [p["has_more"] for p in pages] == [True, True, False], pages
