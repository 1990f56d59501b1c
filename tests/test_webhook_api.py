"""Webhook subscription endpoints: CRUD, secrets, and every bad body refused with the OJS error
body at the boundary (a real `ojs-server`, default settings: HTTPS subscriber URLs only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RedisServer
from tests.fixtures.broker_process import serving

SUBS = "/ojs/v1/webhooks/subscriptions"
GOOD = {"url": "https://hooks.example.com/ojs", "events": ["job.completed", "job.*"]}


@pytest.fixture(scope="module")
def http(redis_server: RedisServer, _test_db_numbers: Iterator[int],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    # One server for the module (no test here runs a job), on a test DB taken as redis_url does.
    url = redis_server.url_for_db(next(_test_db_numbers))
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    with serving(url, Path(tmp_path_factory.mktemp("webhook-api"))) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def assert_error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["message"], error
    return dict(error)


def test_webhook_subscription_crud(http: httpx.Client) -> None:
    # Given a subscription made without a secret
    created = http.post(SUBS, json={**GOOD, "filter": {"queues": ["payments"]}, "metadata": {"owner": "ops"}})
    assert created.status_code == 201, created.text
    body = created.json()
    sub = body["subscription"]
    assert sub["id"].startswith("sub_") and body["id"] == sub["id"]
    assert sub["secret"].startswith("whsec_") and sub["active"] is True
    assert sub["filter"] == {"queues": ["payments"]} and sub["metadata"] == {"owner": "ops"}
    # Then reads never show its secret
    got = http.get(f"{SUBS}/{sub['id']}").json()
    assert "secret" not in got and "secret" not in got["subscription"]
    listed = http.get(SUBS).json()["subscriptions"]
    assert sub["id"] in [s["id"] for s in listed] and all("secret" not in s for s in listed)
    # When it is patched, only the fields given change; null removes the filter
    patched = http.patch(f"{SUBS}/{sub['id']}", json={"events": ["job.failed"], "active": False, "filter": None})
    assert patched.status_code == 200, patched.text
    view = patched.json()["subscription"]
    assert view["events"] == ["job.failed"] and view["active"] is False and "filter" not in view
    assert view["metadata"] == {"owner": "ops"} and view["url"] == GOOD["url"]
    # Rotation gives a new secret, shown once
    rotated = http.post(f"{SUBS}/{sub['id']}/rotate-secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != sub["secret"]
    assert "previous_secret_valid_until" in rotated
    # Deleted, it is gone
    assert http.delete(f"{SUBS}/{sub['id']}").status_code == 200
    assert_error(http.get(f"{SUBS}/{sub['id']}"), 404, "not_found")
    assert_error(http.patch(f"{SUBS}/{sub['id']}", json={"active": True}), 404, "not_found")
    assert_error(http.delete(f"{SUBS}/{sub['id']}"), 404, "not_found")
    assert_error(http.post(f"{SUBS}/{sub['id']}/rotate-secret"), 404, "not_found")
    assert_error(http.get("/ojs/v1/webhooks/deliveries/del_nope"), 404, "not_found")


@pytest.mark.parametrize(("body", "why"), [
    ({"events": ["job.completed"]}, "no url"),
    ({"url": "https://x.example.com"}, "no events"),
    ({**GOOD, "events": []}, "empty events"),
    ({**GOOD, "events": ["Job Completed"]}, "not an event type"),
    ({**GOOD, "events": ["job.completed"] * 51}, "too many events"),
    ({**GOOD, "url": "http://hooks.example.com/ojs"}, "plain http not allowed"),
    ({**GOOD, "url": "ftp://hooks.example.com/ojs"}, "not http"),
    ({**GOOD, "url": "https:///no-host"}, "no host"),
    ({**GOOD, "url": "https://user:pw@hooks.example.com/"}, "credentials in the url"),
    ({**GOOD, "url": "https://hooks.example.com:99999/"}, "bad port"),
    ({**GOOD, "url": "https://h.example.com/" + "a" * 2100}, "url too long"),
    ({**GOOD, "secret": "short"}, "secret too short"),
    ({**GOOD, "active": "yes"}, "active not a boolean"),
    ({**GOOD, "filter": {"queues": ["bad queue!"]}}, "bad queue name"),
    ({**GOOD, "filter": {"tenants": ["a"]}}, "unknown filter field"),
    ({**GOOD, "metadata": {"k": "v" * 9000}}, "metadata too big"),
    ({**GOOD, "callback": "https://x"}, "unknown field"),
])
def test_webhook_subscription_bad_body_is_400(http: httpx.Client, body: dict[str, Any], why: str) -> None:
    error = assert_error(http.post(SUBS, json=body), 400, "invalid_request")
    assert error["retryable"] is False, why


def test_webhook_subscription_bad_json_and_bad_patch(http: httpx.Client) -> None:
    assert_error(http.post(SUBS, content=b"{not json", headers={"content-type": "application/json"}),
                 400, "invalid_payload")
    assert_error(http.post(SUBS, content=b"", headers={"content-type": "application/json"}), 400, "invalid_payload")
    sub = http.post(SUBS, json=GOOD).json()["subscription"]
    assert_error(http.patch(f"{SUBS}/{sub['id']}", json={"url": "http://plain.example.com"}), 400, "invalid_request")
    assert_error(http.patch(f"{SUBS}/{sub['id']}", json={"secret": "x" * 20}), 400, "invalid_request")
    assert_error(http.patch(f"{SUBS}/{sub['id']}", json={"events": None}), 400, "invalid_request")
    assert http.delete(f"{SUBS}/{sub['id']}").status_code == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("url", "events", "active", "secret", "filter", "metadata")


@settings(derandomize=True, database=None, max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({}, optional={name: JSON_VALUES for name in FIELDS}), patch=st.booleans())
def test_webhook_subscription_any_body_gets_an_answer_below_500(
        http: httpx.Client, body: dict[str, Any], patch: bool) -> None:
    if patch:
        reply = http.patch(f"{SUBS}/sub_fuzz", json=body)
    else:
        reply = http.post(SUBS, json={**GOOD, **body} if "url" not in body else body)
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert reply.json()["error"]["code"], reply.text
    elif reply.status_code == 201:
        assert http.delete(f"{SUBS}/{reply.json()['id']}").status_code == 200
