"""Admin workers, dead letters, statistics, maintenance mode and read-only keys, over HTTP."""

from __future__ import annotations

import httpx
import pytest
import redis

from runtime import timefmt
from tests.admin.conftest import Api, assert_error
from tests.fixtures.broker_process import BrokerProcess

Q = "sys"


def _beat(api: Api, worker_id: str, jobs: list[str] | None = None) -> dict[str, object]:
    reply = api.http.post("/ojs/v1/workers/heartbeat", json={"worker_id": worker_id, "active_jobs": jobs or []})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_workers_are_listed_with_a_summary_and_a_quiet_reaches_the_next_heartbeat(api: Api) -> None:
    api.enqueue("t.x", [], queue=Q)
    (held,) = api.fetch(Q, 1, worker_id="w-a")
    _beat(api, "w-a", [held["id"]])
    _beat(api, "w-b")
    listing = api.http.get("/ojs/v1/admin/workers").json()
    assert sorted(w["id"] for w in listing["items"]) == ["w-a", "w-b"]
    assert listing["summary"] == {"total": 2, "running": 2, "quiet": 0, "stale": 0}
    detail = api.http.get("/ojs/v1/admin/workers/w-a").json()
    assert detail["job_ids"] == [held["id"]] and detail["jobs"][0]["state"] == "active"
    assert api.http.post("/ojs/v1/admin/workers/w-a/quiet").json()["directive"] == "quiet"
    assert _beat(api, "w-a", [held["id"]])["state"] == "quiet"
    assert_error(api.http.get("/ojs/v1/admin/workers/nobody"), 404)
    assert_error(api.http.post("/ojs/v1/admin/workers/nobody/quiet"), 404)


def test_only_a_stale_worker_is_deregistered_and_its_jobs_are_requeued(api: Api, store: redis.Redis) -> None:
    api.enqueue("t.x", [], queue=Q)
    (held,) = api.fetch(Q, 1, worker_id="w-old")
    _beat(api, "w-old", [held["id"]])
    assert_error(api.http.delete("/ojs/v1/admin/workers/w-old"), 409)
    # Its last heartbeat a minute ago: it has missed more than the stale threshold of beats.
    minute_ago = timefmt.now_ms() - 60_000
    store.zadd("{ojs}:workers", {"w-old": minute_ago})
    store.hset("{ojs}:worker:w-old", "last_heartbeat_at", minute_ago)
    assert api.http.get("/ojs/v1/admin/workers").json()["summary"]["stale"] == 1
    reply = api.http.delete("/ojs/v1/admin/workers/w-old")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"id": "w-old", "deregistered": True, "requeued": 1}
    assert api.state(held["id"]) == "available"
    assert_error(api.http.get("/ojs/v1/admin/workers/w-old"), 404)


def test_dead_letters_list_group_by_error_retry_and_delete(api: Api) -> None:
    ids = [api.enqueue("t.x", [n], queue=Q, retry={"max_attempts": 1}) for n in range(3)]
    api.fail(Q, 2, "smtp_down")
    api.fail(Q, 1, "bad_address")
    listing = api.http.get("/ojs/v1/admin/dead-letter").json()
    assert sorted(j["id"] for j in listing["items"]) == sorted(ids)
    assert listing["pagination"]["total"] == 3 and listing["pagination"]["page"] == 1
    assert listing["items"][0]["args"] is not None  # whole envelopes
    only = api.http.get("/ojs/v1/admin/dead-letter", params={"error_type": "bad_address"}).json()
    assert [j["id"] for j in only["items"]] == [ids[2]]
    stats = api.http.get("/ojs/v1/admin/dead-letter/stats").json()
    assert stats["total"] == 3 and stats["by_queue"] == {Q: 3}
    assert stats["by_error_type"] == {"smtp_down": 2, "bad_address": 1}
    assert api.http.post(f"/ojs/v1/admin/dead-letter/{ids[0]}/retry").json()["job"]["state"] == "available"
    assert api.http.delete(f"/ojs/v1/admin/dead-letter/{ids[1]}").status_code == 204
    assert api.state(ids[1]) is None
    assert_error(api.http.delete(f"/ojs/v1/admin/dead-letter/{ids[0]}"), 404)  # no longer dead
    bulk = api.http.post("/ojs/v1/admin/dead-letter/retry", json={"filter": {"error_type": "bad_address"},
                                                                  "confirm": True}).json()
    assert bulk["succeeded"] == 1 and api.state(ids[2]) == "available"
    assert_error(api.http.post("/ojs/v1/admin/dead-letter/retry", json={}), 400)


def test_dead_letter_purge_needs_confirm_and_takes_them_all(api: Api) -> None:
    for n in range(3):
        api.enqueue("t.x", [n], queue=Q, retry={"max_attempts": 1})
    api.fail(Q, 3)
    assert_error(api.http.request("DELETE", "/ojs/v1/admin/dead-letter", json={}), 400)
    purged = api.http.request("DELETE", "/ojs/v1/admin/dead-letter", json={"confirm": True}).json()
    assert purged == {"purged_count": 3, "has_more": False, "next_cursor": None}
    assert api.http.get("/ojs/v1/admin/dead-letter/stats").json()["total"] == 0


def test_a_dead_letter_purge_of_every_queue_resumes_from_its_cursor(api: Api) -> None:
    # Given two dead letters in each of two queues
    for queue in ("dl-a", "dl-b"):
        for n in range(2):
            api.enqueue("t.x", [n], queue=queue, retry={"max_attempts": 1})
        api.fail(queue, 2)
    # When a purge goes on from a cursor that stopped in the second queue
    purged = api.http.request("DELETE", "/ojs/v1/admin/dead-letter",
                              json={"confirm": True, "cursor": '["dl-b",0,0]'}).json()
    # Then it starts there: the first queue's dead letters stay
    assert purged == {"purged_count": 2, "has_more": False, "next_cursor": None}
    assert api.http.get("/ojs/v1/admin/dead-letter/stats").json()["by_queue"] == {"dl-a": 2}


def test_stats_count_every_state_and_the_history_counts_this_minutes_work(api: Api) -> None:
    for _ in range(4):
        api.enqueue("t.x", [], queue=Q, retry={"max_attempts": 1})
    api.complete(Q, 2)
    api.fail(Q, 1)
    stats = api.http.get("/ojs/v1/admin/stats").json()
    assert stats["queues"] == 1 and stats["jobs"]["available"] == 1
    assert stats["jobs"]["completed"] == 2 and stats["jobs"]["discarded"] == 1
    assert set(stats["throughput"]) == {"processed_per_minute", "failed_per_minute"}
    history = api.http.get("/ojs/v1/admin/stats/history", params={"period": "1h"}).json()
    totals = {m: sum(p[m] for p in history["data"]) for m in ("enqueued", "completed", "failed", "discarded")}
    assert totals == {"enqueued": 4, "completed": 2, "failed": 1, "discarded": 1}
    other = api.http.get("/ojs/v1/admin/stats/history", params={"period": "1m", "queue": "elsewhere"}).json()
    assert sum(p["enqueued"] for p in other["data"]) == 0
    assert len(other["data"]) in (60, 61)
    for query in ({"period": "2m"}, {"since": "later"}, {"period": "1m", "since": "2000-01-01T00:00:00Z",
                                                         "until": "1999-01-01T00:00:00Z"}):
        assert_error(api.http.get("/ojs/v1/admin/stats/history", params=query), 400)


def test_maintenance_mode_stops_fetches_and_keeps_enqueues(api: Api) -> None:
    on = api.http.post("/ojs/v1/admin/system/maintenance", json={"enabled": True, "reason": "migration"})
    assert on.json()["maintenance"] is True and on.json()["reason"] == "migration"
    job_id = api.enqueue("t.x", [], queue=Q)
    assert api.fetch(Q) == []
    assert api.http.get("/ojs/v1/admin/system/maintenance").json()["maintenance"] is True
    assert api.http.post("/ojs/v1/admin/system/maintenance", json={"enabled": False}).json()["maintenance"] is False
    assert [j["id"] for j in api.fetch(Q)] == [job_id]
    assert_error(api.http.post("/ojs/v1/admin/system/maintenance", json={}), 400)


def test_system_config_shows_settings_but_no_secret(api: Api) -> None:
    config = api.http.get("/ojs/v1/admin/system/config").json()["config"]
    assert "api_key" not in config and "redis_url" not in config
    assert config["max_batch_size"] == 1000 and config["auth"]["api_key"] is False


KEYS = {"OJS_API_KEY": "full-key", "OJS_API_READ_KEYS": "look-1, look-2"}


@pytest.mark.parametrize("server_env", [KEYS], indirect=True)
def test_a_read_only_key_sees_everything_and_changes_nothing(api: Api, server: BrokerProcess) -> None:
    job_id = api.enqueue("t.x", [], queue=Q)
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer look-2"}) as reader:
        assert reader.get("/ojs/v1/admin/queues").status_code == 200
        assert reader.get(f"/ojs/v1/admin/jobs/{job_id}").status_code == 200
        assert reader.get("/ojs/v1/admin/auth").json()["read_only"] is True
        for method, path in (("POST", f"/ojs/v1/admin/queues/{Q}/pause"), ("POST", "/ojs/v1/jobs"),
                             ("DELETE", f"/ojs/v1/jobs/{job_id}"), ("PUT", f"/ojs/v1/admin/queues/{Q}/config")):
            assert_error(reader.request(method, path, json={}), 403)
    assert api.state(job_id) == "available"
    assert api.http.get("/ojs/v1/admin/auth").json()["read_only"] is False
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer guess"}) as stranger:
        assert_error(stranger.get("/ojs/v1/admin/queues"), 401)


def test_dead_letter_bulk_retry_by_ids_leaves_jobs_that_are_not_dead_letters(api: Api) -> None:
    dead = api.enqueue("t.x", [], queue=Q, retry={"max_attempts": 1})
    api.fail(Q, 1)
    cancelled = api.enqueue("t.x", [], queue=Q)
    api.http.delete(f"/ojs/v1/jobs/{cancelled}")
    result = api.http.post("/ojs/v1/admin/dead-letter/retry", json={"ids": [dead, cancelled], "confirm": True}).json()
    assert (result["succeeded"], result["failed"]) == (1, 1)
    assert [e["job_id"] for e in result["errors"]] == [cancelled]
    assert (api.state(dead), api.state(cancelled)) == ("available", "cancelled")


def test_a_dead_letter_purge_by_error_type_follows_its_cursor_past_other_errors(api: Api) -> None:
    wanted = [api.enqueue("t.x", [n], queue=Q, retry={"max_attempts": 1}) for n in range(2)]
    api.fail(Q, 2, "rare")
    for n in range(120):  # newer dead letters of another error, between the start and the wanted ones
        api.enqueue("t.x", [n], queue=Q, retry={"max_attempts": 1})
    api.fail(Q, 120, "common")
    purged, cursor = 0, None
    for _ in range(50):
        body = {"error_type": "rare", "confirm": True, **({"cursor": cursor} if cursor else {})}
        reply = api.http.request("DELETE", "/ojs/v1/admin/dead-letter", json=body).json()
        purged += reply["purged_count"]
        if not (cursor := reply["next_cursor"]):
            break
    assert purged == 2 and {api.state(i) for i in wanted} == {None}
    assert api.http.get("/ojs/v1/admin/dead-letter/stats").json()["total"] == 120


def test_no_worker_is_deregistered_during_the_grace_after_an_outage(api: Api, store: redis.Redis) -> None:
    api.enqueue("t.x", [], queue=Q)
    (held,) = api.fetch(Q, 1, worker_id="w-out")
    _beat(api, "w-out", [held["id"]])
    minute_ago = timefmt.now_ms() - 60_000
    store.zadd("{ojs}:workers", {"w-out": minute_ago})
    store.hset("{ojs}:worker:w-out", "last_heartbeat_at", minute_ago)
    # Redis was away until a moment ago: no worker could beat meanwhile.
    store.hset("{ojs}:reaper", "resume_at_ms", timefmt.now_ms() + 10_000)
    assert_error(api.http.delete("/ojs/v1/admin/workers/w-out"), 409)
    assert api.state(held["id"]) == "active"


def test_a_worker_that_beats_rarely_is_stale_only_after_its_own_intervals(api: Api, store: redis.Redis) -> None:
    reply = api.http.post("/ojs/v1/workers/heartbeat", json={"worker_id": "w-slow", "active_jobs": [],
                                                           "heartbeat_interval_ms": 600_000})
    assert reply.status_code == 200, reply.text
    minute_ago = timefmt.now_ms() - 60_000
    store.zadd("{ojs}:workers", {"w-slow": minute_ago})
    store.hset("{ojs}:worker:w-slow", "last_heartbeat_at", minute_ago)
    assert api.http.get("/ojs/v1/admin/workers/w-slow").json()["state"] == "running"
    assert api.http.get("/ojs/v1/admin/workers").json()["summary"]["stale"] == 0
    assert_error(api.http.delete("/ojs/v1/admin/workers/w-slow"), 409)


def test_cron_lists_are_pages(api: Api) -> None:
    """Both cron listings are bounded pages that say what is left, reading only the page."""
    for name in ("a-cron", "b-cron", "c-cron"):
        reply = api.http.post("/ojs/v1/cron", json={"name": name, "expression": "0 * * * *",
                                                     "job_template": {"type": "report.build", "args": []}})
        assert reply.status_code == 201, reply.text
    data = api.http.get("/ojs/v1/cron", params={"limit": 2}).json()
    assert [c["name"] for c in data["crons"]] == ["a-cron", "b-cron"]
    assert data["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    data = api.http.get("/ojs/v1/cron", params={"limit": 2, "offset": 2}).json()
    assert [c["name"] for c in data["crons"]] == ["c-cron"] and data["pagination"]["has_more"] is False
    everything = api.http.get("/ojs/v1/cron").json()  # no limit: the largest page
    assert everything["count"] == 3 and everything["pagination"]["has_more"] is False
    admin = api.http.get("/ojs/v1/crons", params={"per_page": 2, "page": 2}).json()
    assert [c["name"] for c in admin["items"]] == ["c-cron"]
    assert admin["pagination"]["total"] == 3 and admin["pagination"]["has_more"] is False


def test_the_events_cursor_past_which_nothing_can_come_is_an_empty_page(api: Api) -> None:
    """The greatest stream id there is: Redis refuses a range after it; the API answers an empty
    page (a 500 before)."""
    last = f"{2**64 - 1}-{2**64 - 1}"
    reply = api.http.get("/ojs/v1/events", params={"after": last})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": [], "cursor": last, "has_more": False}
