"""The fair-scheduling extension's pools against a running `ojs-run`: its pool is listed, an
operator's definition reaches its processes at their next heartbeat, and the scheduling stats
count what each queue was given."""

from __future__ import annotations

import redis

from tests.admin.conftest import Api, assert_error
from tests.fixtures.procs import KEYS, Start, wait_until


def test_an_ojs_run_pool_is_listed_and_follows_its_stored_definition(
    api: Api, start: Start, redis_client: redis.Redis,
) -> None:
    runtime = start("--processes", "1", "--no-http", "--queues", "pa:1,pb:1", "--heartbeat-interval", "0.2")
    runtime.wait_ready(1)
    pools = wait_until(lambda: api.http.get("/ojs/v1/admin/pools").json()["items"], what="the pool listed")
    (pool,) = pools
    assert pool["name"] == "default" and pool["active_workers"] == 1 and pool["defined"] is False
    assert pool["queues"] == ["pa", "pb"] and pool["weights"] == {"pa": 1, "pb": 1}
    (worker_id,) = [w["id"] for w in api.http.get("/ojs/v1/admin/workers").json()["items"]]

    reply = api.http.put("/ojs/v1/admin/pools/default",
                         json={"strategy": "strict", "queues": {"pa": {"weight": 5}, "pb": {"weight": 1}}})
    assert reply.status_code == 201, reply.text
    assert reply.json()["pool"]["strategy"] == "strict" and reply.json()["pool"]["weights"] == {"pa": 5, "pb": 1}
    wait_until(lambda: redis_client.hmget(KEYS.worker(worker_id), ["weights", "strategy"]) == [b"5,1", b"strict"],
               what="the pool to apply its definition")
    # The pool logs the change before its next heartbeat stores it; the log reaches the test
    # through the process's pipe, so it may come after the stored weights: waited for.
    wait_until(lambda: "from pool default's definition" in runtime.log(), what="the pool to log its definition")
    again = api.http.put("/ojs/v1/admin/pools/default", json={"queues": ["pa", "pb"], "weights": {"pa": 2}})
    assert again.status_code == 200 and again.json()["pool"]["weights"] == {"pa": 2, "pb": 1}

    ids = [api.enqueue("ctl.ok", [], queue="pa") for _ in range(3)]
    wait_until(lambda: all(api.state(i) == "completed" for i in ids), what="the jobs to complete")
    stats = api.http.get("/ojs/v1/admin/scheduling/stats").json()
    (pa,) = [q for q in stats["queues"] if q["name"] == "pa"]
    assert pa["dispatch_count_1m"] == 3 and pa["dispatch_ratio_1m"] == 1.0 and pa["avg_wait_ms"] >= 0
    assert stats["window"] == "PT1M" and stats["stats"]["dispatched_1m"] == 3


def test_bad_pool_definitions_get_a_400(api: Api) -> None:
    for body in ({"queues": {}}, {"queues": {"Bad Q": {"weight": 1}}}, {"queues": {"a": {"weight": 0}}},
                 {"queues": ["a"], "weights": {"b": 2}}, {"name": "other", "queues": ["a"]},
                 {"queues": ["a"], "strategy": "random"}, {"queues": ["a"], "colour": "red"}):
        assert_error(api.http.put("/ojs/v1/admin/pools/p1", json=body), 400)
