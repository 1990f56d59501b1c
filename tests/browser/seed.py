"""Real data for the dashboard, made through the HTTP data plane as producers and workers make it:
enqueue, fetch, heartbeat, progress, ack and nack, plus a cron and a workflow."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

ADMIN_KEY = "dash-admin-key"
READ_KEY = "dash-read-key"
WORKER_ID = "http-worker-dash"
LARGE_RESULT_CHARS = 1024 * 1024
DEAD_LETTER = {"max_attempts": 1, "on_exhaustion": "dead_letter"}
TRACEBACK = [
    'File "handlers/billing.py", line 42, in charge',
    "    gateway.charge(card, amount)",
    "PaymentDeclined: card declined by issuer",
]


@dataclass
class Seeded:
    email_available: list[str] = field(default_factory=list)
    email_completed: list[str] = field(default_factory=list)
    reports_available: list[str] = field(default_factory=list)
    large_result_job: str = ""
    active_job: str = ""
    dead_declined: list[str] = field(default_factory=list)
    dead_timeout: list[str] = field(default_factory=list)
    backlog: list[str] = field(default_factory=list)
    cron_name: str = "nightly-report"
    workflow_id: str = ""


def _ok(reply: httpx.Response) -> dict:
    assert reply.status_code < 300, f"{reply.request.method} {reply.request.url}: {reply.status_code} {reply.text}"
    return reply.json() if reply.content else {}


def enqueue(client: httpx.Client, queue: str, job_type: str, args: list, **extra: object) -> str:
    body = {"type": job_type, "args": args, "options": {"queue": queue, **extra}}
    return str(_ok(client.post("/ojs/v1/jobs", json=body))["job"]["id"])


def fetch(client: httpx.Client, queue: str, count: int = 1) -> list[dict]:
    reply = _ok(client.post("/ojs/v1/workers/fetch", json={"queues": [queue], "count": count, "worker_id": WORKER_ID}))
    return list(reply["jobs"])


BACKLOG = 60  # more than one page of the job list (50)


def seed(client: httpx.Client) -> Seeded:
    s = Seeded()
    # backlog: the oldest jobs, more than one page of them.
    batch = [{"type": "backlog.item", "args": [n], "options": {"queue": "backlog"}} for n in range(BACKLOG)]
    s.backlog = [job["id"] for job in _ok(client.post("/ojs/v1/jobs/batch", json={"jobs": batch}))["jobs"]]
    # email: some done (one with a 1 MiB result), one running with progress, the rest waiting.
    for n in range(3):
        s.email_completed.append(enqueue(client, "email", "email.send", [{"to": f"user{n}@example.com"}]))
    s.large_result_job = enqueue(client, "email", "email.render", [{"template": "digest"}])
    s.active_job = enqueue(client, "email", "email.send", [{"to": "slow@example.com"}])
    claimed = fetch(client, "email", count=5)
    assert [j["id"] for j in claimed] == [*s.email_completed, s.large_result_job, s.active_job]
    for job_id in s.email_completed:
        _ok(client.post("/ojs/v1/workers/ack", json={"job_id": job_id, "result": {"delivered": True}, "worker_id": WORKER_ID}))
    large = {"html": "x" * LARGE_RESULT_CHARS}
    _ok(client.post("/ojs/v1/workers/ack", json={"job_id": s.large_result_job, "result": large, "worker_id": WORKER_ID}))
    _ok(client.put(f"/ojs/v1/jobs/{s.active_job}/progress", json={"progress": 40, "percent": True, "message": "sending"}))
    # It says it beats every 10 minutes: on a slow machine a test outlasting the default 5 s
    # interval must not see it go stale, or lose its job to the dead-worker reaper.
    _ok(client.post("/ojs/v1/workers/heartbeat", json={
        "worker_id": WORKER_ID, "active_jobs": [s.active_job], "hostname": "dash-host", "pid": 4242,
        "queues": ["email", "billing"], "concurrency": 4, "heartbeat_interval_ms": 600_000,
    }))
    for n in range(6):
        s.email_available.append(enqueue(client, "email", "email.send", [{"to": f"later{n}@example.com", "ref": f"needle-{n}"}]))
    # reports: waiting jobs, the target of the bulk cancel.
    for n in range(5):
        s.reports_available.append(enqueue(client, "reports", "report.build", [{"report": f"r{n}"}]))
    # billing: dead letters of two error types.
    for n in range(3):
        s.dead_declined.append(enqueue(client, "billing", "billing.charge", [{"invoice": n}], retry=DEAD_LETTER))
    for n in range(2):
        s.dead_timeout.append(enqueue(client, "billing", "billing.refund", [{"refund": n}], retry=DEAD_LETTER))
    for job in fetch(client, "billing", count=5):
        declined = job["id"] in s.dead_declined
        error = {"type": "PaymentDeclined", "message": "card declined by issuer", "backtrace": TRACEBACK} if declined \
            else {"type": "TimeoutError", "message": "gateway did not answer in 30 s"}
        reply = _ok(client.post("/ojs/v1/workers/nack", json={"job_id": job["id"], "error": error, "worker_id": WORKER_ID}))
        assert reply["state"] == "discarded", reply
    _ok(client.post("/ojs/v1/cron", json={
        "name": s.cron_name, "expression": "0 3 * * *", "timezone": "UTC",
        "job_template": {"type": "report.nightly", "args": [], "options": {"queue": "reports"}},
    }))
    workflow = _ok(client.post("/ojs/v1/workflows", json={"name": "onboarding", "steps": [
        {"id": "signup", "type": "user.create", "args": [{"user": "ada"}], "options": {"queue": "flows"}},
        {"id": "welcome", "type": "email.send", "args": [], "depends_on": ["signup"], "options": {"queue": "flows"}},
        {"id": "crm", "type": "crm.sync", "args": [], "depends_on": ["signup"], "options": {"queue": "flows"}},
        {"id": "report", "type": "report.build", "args": [], "depends_on": ["welcome", "crm"], "options": {"queue": "flows"}},
    ]}))
    s.workflow_id = workflow["workflow"]["id"]
    return s
