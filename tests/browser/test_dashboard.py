"""The dashboard in a real headless Chromium against a real server and Redis.

Each test opens pages the way an operator does, then checks what a click did in Redis and
through the API. Every test starts from an emptied Redis and the same seeded data (conftest.py).
The watch there fails a test on any console error, failed request or 4xx/5xx reply that the
test did not name as expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import redis

try:
    from playwright.sync_api import expect
except ImportError:  # then the browser fixture skips these tests (and fails them under CI)
    expect = None

from runtime.broker.keys import Keys
from tests.browser.conftest import Dashboard
from tests.browser.seed import ADMIN_KEY, LARGE_RESULT_CHARS, READ_KEY, WORKER_ID, Seeded
from tests.fixtures.broker_process import BrokerProcess
from tests.fixtures.procs import Runtime, states, wait_until

KEYS = Keys()
PAGES = ["overview", "queues", "jobs", "dead-letters", "workers", "cron", "workflows"]


def state_in_redis(db: redis.Redis, job_id: str) -> str:
    return (db.hget(KEYS.job(job_id), "state") or b"").decode()


def test_every_page_shows_the_seeded_data(open_dashboard: Any, seeded: Seeded) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page

    done = len(seeded.email_completed) + 1  # and the large result's job
    dash.open("#/overview")
    expect(page.locator("#throughput svg path.s-completed")).to_be_attached()
    expect(page.locator("#throughput .legend")).to_contain_text(f"completed ({done})")
    expect(page.locator("#queue-depths tr", has_text="email")).to_be_visible()
    expect(page.locator("#queue-depths")).to_contain_text("reports")
    expect(page.locator("#overview-cards")).to_contain_text("Failure rate")
    dash.shot("overview")
    for span in ("24h", "30d"):  # hourly and daily points
        page.locator("#range").select_option(span)
        expect(page).to_have_url(re.compile(f"range={span}$"))
        dash.ready("overview")
        expect(page.locator("#throughput .legend")).to_contain_text(f"completed ({done})")

    dash.open("#/queues")
    for queue in ("email", "reports", "billing"):
        expect(page.locator(f'#queues-table tr[data-queue="{queue}"]')).to_be_visible()
    dash.shot("queues")

    dash.open("#/jobs")
    expect(page.locator(f'#job-rows tr[data-id="{seeded.email_available[-1]}"]')).to_be_visible()
    dash.shot("jobs")

    dash.open("#/jobs?queue=backlog")
    expect(page.locator("#job-rows tr")).to_have_count(50)
    page.locator("#load-more").click()
    expect(page.locator("#job-rows tr")).to_have_count(len(seeded.backlog))
    expect(page.locator("#load-more")).to_be_hidden()
    assert page.locator("#job-rows tr").last.get_attribute("data-id") == seeded.backlog[0]  # newest first
    dash.open("#/jobs?queue=backlog&order=asc")
    expect(page.locator("#job-rows tr").first).to_have_attribute("data-id", seeded.backlog[0])
    expect(page.locator("#filter-order")).to_have_value("asc")

    page.locator("#filter-queue").fill("billing")
    page.locator("#filter-state").select_option("discarded")
    page.locator("#filter-since").fill("2000-01-01T00:00")
    page.locator("#job-filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"#/jobs\?queue=billing&state=discarded&since=2000-01-01T"))
    dash.ready("jobs")
    expect(page.locator("#job-rows tr")).to_have_count(len(seeded.dead_declined) + len(seeded.dead_timeout))

    dash.open("#/jobs?type=billing.ch*")
    expect(page.locator("#job-rows tr")).to_have_count(len(seeded.dead_declined))

    dash.open("#/jobs?q=needle-3")
    expect(page.locator(f'#job-rows tr[data-id="{seeded.email_available[3]}"]')).to_be_visible()
    expect(page.locator(f'#job-rows tr[data-id="{seeded.email_available[2]}"]')).to_have_count(0)

    dash.open("#/jobs?queue=billing&state=discarded&error_type=PaymentDeclined")
    for job_id in seeded.dead_declined:
        expect(page.locator(f'#job-rows tr[data-id="{job_id}"]')).to_be_visible()
    expect(page.locator("#job-rows tr")).to_have_count(len(seeded.dead_declined))

    dash.open(f"#/jobs/{seeded.active_job}")
    expect(page.locator("#progress")).to_contain_text("40%")
    expect(page.locator("#timeline")).to_contain_text("started")
    expect(page.locator("#args")).to_contain_text("slow@example.com")

    dash.open(f"#/jobs/{seeded.dead_declined[0]}")
    expect(page.locator("#timeline li").last).to_contain_text("discarded")
    expect(page.locator("#timeline")).not_to_contain_text("completed")
    expect(page.locator("#errors")).to_contain_text("PaymentDeclined")
    page.locator("#errors summary", has_text="Traceback").first.click()
    expect(page.locator("#errors details pre").first).to_contain_text("gateway.charge(card, amount)")
    dash.shot("job")

    dash.open("#/dead-letters")
    expect(page.locator('#by-error_type [data-error-type="PaymentDeclined"]')).to_contain_text("3")
    expect(page.locator('#by-error_type [data-error-type="TimeoutError"]')).to_contain_text("2")
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(5)
    dash.shot("dead-letters")

    dash.open("#/workers")
    row = page.locator(f'#workers-table tr[data-worker="{WORKER_ID}"]')
    expect(row).to_contain_text("1 busy")  # an HTTP worker does not say how many slots it has
    row.locator("a", has_text=WORKER_ID).click()
    expect(page.locator("#worker-jobs")).to_contain_text(seeded.active_job)
    dash.shot("workers")

    dash.open("#/cron")
    cron = page.locator(f'#cron-table tr[data-cron="{seeded.cron_name}"]')
    expect(cron).to_contain_text("0 3 * * *")
    expect(cron).to_contain_text("enabled")
    runs = cron.locator(".next-run")
    expect(runs).to_have_count(3)  # the server's next run, and the two after it
    for n in range(3):
        expect(runs.nth(n)).to_contain_text(" 03:00:00Z")
    dash.shot("cron")

    dash.open("#/workflows")
    expect(page.locator(f'#workflow-table tr[data-workflow="{seeded.workflow_id}"]')).to_contain_text("onboarding")
    dash.shot("workflows")
    page.locator(f'#workflow-table tr[data-workflow="{seeded.workflow_id}"] a').click()
    dash.ready("workflows")
    graph = page.locator("#workflow-graph svg")
    expect(graph.locator("g.node")).to_have_count(4)
    expect(graph.locator("path.edge")).to_have_count(4)
    expect(graph.locator('g.node[data-step="signup"]')).to_have_class("node available linked")
    dash.shot("workflow")
    assert dash.watch.problems == []


def test_a_dead_letter_retried_from_the_page_is_back_in_its_queue(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis, api: httpx.Client,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    target, other = seeded.dead_declined[0], seeded.dead_declined[1]
    assert db.zscore(KEYS.dlq, target) is not None
    dash.open("#/dead-letters")
    page.locator('#by-error_type [data-error-type="PaymentDeclined"]').click()
    dash.ready("dead-letters")
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(3)
    page.locator(f'#dead-letter-list tr[data-id="{target}"] input.select').check()
    page.locator(".toolbar button.action", has_text="Retry").click()
    dash.confirm()
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(2)
    expect(page.locator(f'#dead-letter-list tr[data-id="{target}"]')).to_have_count(0)
    expect(page.locator('#by-error_type [data-error-type="PaymentDeclined"]')).to_contain_text("2")

    assert db.zscore(KEYS.dlq, target) is None
    assert state_in_redis(db, target) == "available"
    assert state_in_redis(db, other) == "discarded"
    assert api.get("/ojs/v1/admin/dead-letter/stats").json()["by_error_type"]["PaymentDeclined"] == 2
    assert dash.watch.problems == []


def test_a_queue_paused_from_the_page_hands_out_nothing(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis, api: httpx.Client,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/queues")
    row = page.locator('#queues-table tr[data-queue="email"]')
    row.locator("button", has_text="Pause").click()
    expect(row.locator(".queue-state")).to_have_text("paused")
    expect(row.locator("button", has_text="Resume")).to_be_visible()

    assert db.exists(KEYS.paused("email"))
    assert not db.exists(KEYS.paused("reports"))
    fetched = api.post("/ojs/v1/workers/fetch", json={"queues": ["email"], "count": 10}).json()
    assert fetched["jobs"] == []
    assert api.get("/ojs/v1/admin/queues/email").json()["paused"] is True
    assert dash.watch.problems == []


def test_a_bulk_cancel_by_filter_cancels_exactly_what_matches(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/jobs?queue=reports&state=available")
    expect(page.locator("#job-rows tr")).to_have_count(len(seeded.reports_available))
    page.locator(".toolbar button.action", has_text="Cancel").click()
    dialog = page.locator("dialog.dialog[open]")
    expect(dialog).to_contain_text(f"cancel {len(seeded.reports_available)} matching job(s)")
    dash.confirm()
    expect(page.locator("#job-rows tr")).to_have_count(0)

    assert {state_in_redis(db, j) for j in seeded.reports_available} == {"cancelled"}
    assert {state_in_redis(db, j) for j in seeded.email_available} == {"available"}
    assert state_in_redis(db, seeded.active_job) == "active"
    assert dash.watch.problems == []


def test_a_read_only_key_sees_every_page_and_no_action(open_dashboard: Any, seeded: Seeded) -> None:
    dash: Dashboard = open_dashboard(key=READ_KEY)
    page = dash.page
    routes = [f"#/{name}" for name in PAGES] + [f"#/jobs/{seeded.dead_declined[0]}", f"#/workflows/{seeded.workflow_id}"]
    for route in routes:
        dash.open(route)
        expect(page.locator("#key-kind")).to_have_text("read-only key")
        expect(page.locator("#view")).not_to_contain_text("Could not load")
        assert page.locator("#view button.action, #view input.action").filter(visible=True).count() == 0, route
        assert page.locator("#view button:visible", has_text="Pause").count() == 0
    dash.open("#/queues")
    expect(page.locator('#queues-table tr[data-queue="email"]')).to_be_visible()
    assert dash.watch.problems == []


def test_the_key_is_asked_once_and_kept_for_the_session(open_dashboard: Any, seeded: Seeded) -> None:
    dash: Dashboard = open_dashboard(key=None)
    page = dash.page
    # The first API call goes out without a key: its 401 is what makes the page ask.
    dash.watch.allow(r"HTTP 401: GET .*/ojs/v1/admin/auth$")
    dash.watch.allow(r"console error: Failed to load resource: the server responded with a status of 401")
    page.goto(dash.base)
    page.locator("#key-dialog input").fill("not-the-key")
    page.locator("#key-dialog button[type=submit]").click()
    expect(page.locator("#key-dialog")).to_contain_text("refused")
    page.locator("#key-dialog input").fill(ADMIN_KEY)
    page.locator("#key-dialog button[type=submit]").click()
    dash.ready("overview")
    expect(page.locator("#queue-depths")).to_contain_text("email")
    dash.watch.allowed.clear()  # from here on, not one 401
    page.reload()
    dash.ready("overview")
    expect(page.locator("#key-dialog")).to_have_count(0)
    assert dash.watch.problems == []
    # Forgotten, it is asked for again.
    dash.watch.allow(r"HTTP 401: GET .*/ojs/v1/admin/auth$")
    dash.watch.allow(r"console error: Failed to load resource: the server responded with a status of 401")
    page.locator("#forget-key").click()
    expect(page.locator("#key-dialog")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ojs.admin.key')") is None


def test_a_one_megabyte_result_is_cut_until_asked_for(open_dashboard: Any, seeded: Seeded) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open(f"#/jobs/{seeded.large_result_job}")
    result = page.locator("#result pre")
    expect(page.locator("#result .truncated-note")).to_contain_text("of 1.0 MB")
    shown = result.evaluate("el => el.textContent.length")
    assert shown < 5000
    page.locator("#result a.expand").click()
    expect(page.locator("#result .truncated-note")).to_have_count(0)
    assert result.evaluate("el => el.textContent.length") > LARGE_RESULT_CHARS
    assert dash.watch.problems == []


def test_the_job_list_shows_new_and_changed_jobs_without_a_reload(
    open_dashboard: Any, seeded: Seeded, api: httpx.Client,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/jobs?queue=reports&every=1")
    expect(page.locator("#refresh")).to_have_value("1")
    first = seeded.reports_available[0]
    expect(page.locator(f'#job-rows tr[data-id="{first}"]')).to_have_attribute("data-state", "available")
    added = api.post("/ojs/v1/jobs", json={"type": "report.build", "args": [], "options": {"queue": "reports"}}).json()["job"]["id"]
    assert api.delete(f"/ojs/v1/jobs/{first}").status_code == 200
    live = {"timeout": 10_000}  # the list refreshes every second
    expect(page.locator("#job-rows tr").first).to_have_attribute("data-id", added, **live)
    expect(page.locator(f'#job-rows tr[data-id="{first}"]')).to_have_attribute("data-state", "cancelled", **live)

    # A job that leaves a state filter is marked, not left looking as it was.
    dash.open("#/jobs?queue=reports&state=available&every=1")
    second = seeded.reports_available[1]
    expect(page.locator(f'#job-rows tr[data-id="{second}"]')).not_to_have_class(re.compile("gone"))
    assert api.delete(f"/ojs/v1/jobs/{second}").status_code == 200
    expect(page.locator(f'#job-rows tr[data-id="{second}"]')).to_have_class(re.compile("gone"), **live)
    assert dash.watch.problems == []


def test_a_pool_shows_its_busy_and_free_slots_and_job_and_is_quieted_from_the_page(
    open_dashboard: Any, server: BrokerProcess, api: httpx.Client, db: redis.Redis, tmp_path: Path,
) -> None:
    runtime = Runtime(server.redis_url, "tests.fixtures.pool_handlers", "--processes", "1", "--concurrency", "3",
                      "--no-http", "--queues", "pool-q", "--heartbeat-interval", "0.5", log_path=tmp_path / "ojs-run.log")
    try:
        runtime.wait_ready(1)
        _quiet_a_busy_pool(open_dashboard, api, db)
    finally:
        runtime.stop()
        print(runtime.log())


def _quiet_a_busy_pool(open_dashboard: Any, api: httpx.Client, db: redis.Redis) -> None:
    job_id = api.post("/ojs/v1/jobs", json={"type": "gate.wait", "args": [], "options": {"queue": "pool-q"}}).json()["job"]["id"]
    wait_until(lambda: states(db, [job_id]) == ["active"], what="the pool to start the job")
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/workers")
    row = page.locator("#workers-table tbody tr").first  # the pool process is the only worker
    expect(row).to_contain_text("1 busy / 2 free", timeout=10_000)  # from the pool's next heartbeat
    expect(row).to_contain_text("pool-q")
    pool = page.locator('#pools tr[data-pool="default"]')
    expect(pool).to_contain_text("pool-q ×1")
    expect(pool).to_contain_text("1 busy / 2 free")
    expect(page.locator("#scheduling")).to_contain_text("pool-q")
    worker_id = row.get_attribute("data-worker")
    row.locator("a", has_text=worker_id).click()
    expect(page.locator("#worker-jobs")).to_contain_text(job_id)
    dash.shot("workers-pool")
    row.locator("button", has_text="Quiet").click()
    dash.confirm()
    expect(row.locator(".badge")).to_have_text("quiet", timeout=10_000)
    assert api.get(f"/ojs/v1/admin/workers/{worker_id}").json()["directive"] == "quiet"
    db.rpush(f"pooltest:go:{job_id}:1", "1")  # let the held job finish
    wait_until(lambda: states(db, [job_id]) == ["completed"], what="the held job to finish")
    assert dash.watch.problems == []


def test_a_queue_limit_and_a_purge_set_from_the_page_take_effect(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis, api: httpx.Client,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/queues")
    reports = page.locator('#queues-table tr[data-queue="reports"]')
    reports.locator("button", has_text="Config").click()
    page.locator('dialog.dialog[open] input[name="max_depth"]').fill(str(len(seeded.reports_available)))
    dash.confirm()
    expect(page.locator("#toasts")).to_contain_text("reports: max_depth 5, rate limit none")
    full = api.post("/ojs/v1/jobs", json={"type": "report.build", "args": [], "options": {"queue": "reports"}})
    assert full.status_code == 429 and full.json()["error"]["code"] == "QUEUE_FULL", full.text

    email = page.locator('#queues-table tr[data-queue="email"]')
    email.locator("button", has_text="Purge").click()
    dash.confirm()  # "completed" is the state ticked by default
    expect(page.locator("#toasts")).to_contain_text("Purged 4 jobs from email")
    assert not any(db.exists(KEYS.job(j)) for j in [*seeded.email_completed, seeded.large_result_job])
    assert {state_in_redis(db, j) for j in seeded.email_available} == {"available"}
    assert dash.watch.problems == []


def test_a_cron_disabled_and_triggered_from_the_page(
    open_dashboard: Any, seeded: Seeded, api: httpx.Client,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    dash.open("#/cron")
    row = page.locator(f'#cron-table tr[data-cron="{seeded.cron_name}"]')
    row.locator("button", has_text="Disable").click()
    expect(row.locator(".badge")).to_have_text("disabled")
    assert api.get(f"/ojs/v1/cron/{seeded.cron_name}").json()["cron"]["enabled"] is False
    row.locator("button", has_text="Trigger now").click()
    dash.confirm()
    expect(page.locator("#toasts")).to_contain_text(f"{seeded.cron_name}: enqueued")
    listed = api.get("/ojs/v1/admin/jobs", params={"queue": "reports", "type": "report.nightly"}).json()["items"]
    assert [job["state"] for job in listed] == ["available"]
    assert dash.watch.problems == []


def test_dead_letters_deleted_from_the_page_are_gone_the_selected_then_a_whole_group(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    selected, rest = seeded.dead_timeout
    dash.open("#/dead-letters?error_type=TimeoutError")
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(2)
    page.locator(f'#dead-letter-list tr[data-id="{selected}"] input.select').check()
    page.locator(".toolbar button.action", has_text="Delete").click()
    dash.confirm()
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(1)
    assert not db.exists(KEYS.job(selected)) and db.zscore(KEYS.dlq, selected) is None
    assert db.zscore(KEYS.dlq, rest) is not None

    page.locator(".toolbar button.action", has_text="Delete").click()  # nothing selected: the group
    expect(page.locator("dialog.dialog[open]")).to_contain_text('all dead letters matching {"error_type":"TimeoutError"}')
    dash.confirm()
    expect(page.locator("#dead-letter-list tbody tr")).to_have_count(0)
    assert not db.exists(KEYS.job(rest)) and db.zscore(KEYS.dlq, rest) is None
    assert all(db.zscore(KEYS.dlq, j) is not None for j in seeded.dead_declined)
    assert dash.watch.problems == []


def test_a_job_cancelled_then_retried_then_deleted_from_its_page(
    open_dashboard: Any, seeded: Seeded, db: redis.Redis,
) -> None:
    dash: Dashboard = open_dashboard()
    page = dash.page
    job_id = seeded.email_available[0]
    dash.open(f"#/jobs/{job_id}")
    actions = page.locator("#view .toolbar")
    for label, state in (("Cancel", "cancelled"), ("Retry", "available")):
        actions.locator("button", has_text=label).click()
        dash.confirm()
        expect(page.locator("#view h1 .badge")).to_have_text(state)
        assert state_in_redis(db, job_id) == state
    actions.locator("button", has_text="Cancel").click()
    dash.confirm()
    expect(page.locator("#view h1 .badge")).to_have_text("cancelled")
    actions.locator("button", has_text="Delete").click()
    dash.confirm()
    expect(page).to_have_url(re.compile(r"#/jobs$"))  # back to the list, once the delete was answered
    dash.ready("jobs")
    assert not db.exists(KEYS.job(job_id))
    assert dash.watch.problems == []


CRON_FORMS = ["0 3 * * *", "*/15 * * * *", "30 9 * * 1-5", "0 0 1 * *", "@hourly", "@daily",
              "0 12 13 * 5", "0 0 * * 7", "5,35 8-18/2 * 1,6 *", "@every 5m"]


def test_the_cron_pages_later_runs_are_the_servers_schedule(open_dashboard: Any, server: BrokerProcess) -> None:
    """The runs the page computes after a cron's next one are the server's own schedule
    (runtime.cron_schedule), run for run, for every form the page computes."""
    from runtime.cron_schedule import parse_cron
    from runtime.timefmt import format_ms

    dash: Dashboard = open_dashboard()
    dash.open("#/cron")
    after_ms = 1_796_000_000_000  # a fixed instant: 2026-11-30
    for expression in CRON_FORMS:
        schedule = parse_cron(expression, "UTC")
        expected, t = [], after_ms
        for _ in range(4):
            t = schedule.next_after_ms(t)
            expected.append(format_ms(t))
        computed = dash.page.evaluate(
            "async ([e, after]) => (await import('./js/cron.js')).runsAfter(e, 'UTC', after, 3)",
            [expression, expected[0]],
        )
        assert computed == expected[1:], expression
    assert dash.page.evaluate("async () => (await import('./js/cron.js')).runsAfter('0 3 * * *', 'Europe/Paris', '2026-12-02T02:00:00.000Z', 2)") is None
    assert dash.watch.problems == []
