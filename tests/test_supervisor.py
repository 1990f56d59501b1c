"""The supervisor with real processes: crashes, kills, drains, stuck handlers, boot errors and
recycling. Every test waits on a job state or a record, with a deadline."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from redis.asyncio import Redis

from runtime import Draft
from runtime.broker.core import Broker, Failure
from runtime.config import Settings
from runtime.liveness import EXIT_BOOT_ERROR
from tests.fixtures.procs import (
    KEYS,
    Runtime,
    Start,
    free_port,
    integrity_problems,
    job,
    states,
    wait_until,
)
from tests.test_worker_runtime import completed, enqueue

pytestmark = pytest.mark.slow



def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_supervisor_sigkill_of_a_pool_mid_load_loses_no_job(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given a backlog being worked on by two pools
    ids = enqueue(redis_url, *(Draft(type="count.job", args=[0.05]) for _ in range(150)))
    runtime = start("--processes", "2", "--concurrency", "4", "--no-http")
    wait_until(lambda: redis_client.hlen("pooltest:done") >= 30, what="30 jobs done")
    # When one pool process is killed while it runs jobs
    victim = runtime.pool_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # Then it is replaced, its jobs go back at once, and every job completes
    wait_until(lambda: len(runtime.pool_pids()) >= 3, what="a replacement pool")
    wait_until(lambda: completed(redis_client, ids), timeout_s=40, what="all jobs to complete")
    done = {k.decode(): int(v) for k, v in redis_client.hgetall("pooltest:done").items()}
    assert max(done.values()) == 1  # no attempt ran to completion twice
    for job_id in ids:  # the attempt that was acked ran to completion exactly once
        assert done[f"{job_id}:{job(redis_client, job_id)['attempt']}"] == 1
    lost = [i for i in ids if "worker_death" in job(redis_client, i).get("e1", "")]
    assert lost, "the killed pool held jobs, which were failed as worker_lost and retried"
    assert "failed (worker_lost)" in runtime.log()
    assert integrity_problems(redis_url) == []


def test_supervisor_sigterm_drains_then_hands_back_what_is_left(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given two short and two long jobs running
    short = enqueue(redis_url, *(Draft(type="sleep.job", args=[1.5]) for _ in range(2)))
    long = enqueue(redis_url, *(Draft(type="sleep.job", args=[60]) for _ in range(2)))
    runtime = start("--processes", "1", "--concurrency", "4", "--no-http", "--drain-timeout", "3")
    wait_until(lambda: redis_client.scard("pooltest:started") == 4, what="4 jobs running")
    # When
    runtime.send(signal.SIGTERM)
    signalled_ms = time.time() * 1000
    later = enqueue(redis_url, Draft(type="sleep.job", args=[0]))
    # Then: exit 0; in-flight jobs finished; the rest is back, attempt unchanged; nothing new ran
    assert runtime.wait_exit(30) == 0
    assert states(redis_client, short) == ["completed", "completed"]
    assert all(int(job(redis_client, i)["completed_at"]) > signalled_ms for i in short)
    for job_id in long:
        held = job(redis_client, job_id)
        assert (held["state"], held["attempt"]) == ("available", "0")
        assert msgspec.json.decode(held["error"])["type"] == "shutdown"
    assert (job(redis_client, later[0])["state"], job(redis_client, later[0])["attempt"]) == ("available", "0")
    assert redis_client.zcard(KEYS.workers) == 0  # the pool deregistered itself
    assert integrity_problems(redis_url) == []


def test_supervisor_replaces_a_pool_whose_sync_handler_ignores_its_timeout(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a CPU-bound sync job that will not stop at its timeout, and a long job beside it
    quick_retry = {"initial_interval": "PT0.1S", "jitter": False}
    (stuck,) = enqueue(redis_url, Draft(type="cpu.spin", args=[60], options={"timeout_ms": 500, "retry": quick_retry}))
    (sibling,) = enqueue(redis_url, Draft(type="sleep.job", args=[60]))
    runtime = start("--processes", "1", "--concurrency", "2", "--no-http", "--timeout-grace", "0.5",
                    "--drain-timeout", "1")
    # When its timeout and the grace after it pass
    wait_until(lambda: msgspec.json.decode(job(redis_client, stuck).get("e1", "{}")).get("type") == "timeout",
               timeout_s=30, what="the stuck job to fail with a timeout")
    # Then the process was replaced (it ends once its drain is over); the job failed with a
    # timeout, and its retry waited until the stuck thread's process was gone (the pool's stop
    # deadline and a margin: 1 + 5 + 5 + 5 s here), then completed
    failed = job(redis_client, stuck)
    assert failed["state"] == "retryable"
    assert int(failed["retry_delay_ms"]) >= (1 + 5 + 5 + 5) * 1000
    wait_until(lambda: not alive(runtime.pool_pids()[0]), what="the stuck pool to end")
    assert len(runtime.pool_pids()) >= 2
    wait_until(lambda: completed(redis_client, [stuck]), timeout_s=60, what="the stuck job's retry to complete")
    stuck_job = job(redis_client, stuck)
    assert (stuck_job["attempt"], stuck_job["result"]) == ("2", '"attempt 2"')
    assert not redis_client.sismember("pooltest:overlapped", stuck), "the retry ran beside the stuck attempt"
    assert "ignored its timeout: replacing it" in runtime.log()
    # The job beside it was handed back without spending an attempt, and runs again
    wait_until(lambda: job(redis_client, sibling).get("state") == "active", what="the sibling to run again")
    sibling_job = job(redis_client, sibling)
    assert sibling_job["attempt"] == "1"
    assert msgspec.json.decode(sibling_job["e1"])["type"] == "shutdown"
    assert integrity_problems(redis_url) == []


def test_supervisor_job_that_kills_its_worker_three_times_is_dead_lettered(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a job whose handler calls os._exit
    (job_id,) = enqueue(redis_url, Draft(type="crash.exit", options={"retry": {"max_attempts": 10}}))
    # When it runs
    runtime = start("--processes", "1", "--no-http")
    # Then after three lost workers it is discarded into the dead letter queue, not looped on
    wait_until(lambda: states(redis_client, [job_id]) == ["discarded"], timeout_s=40, what="the job to be discarded")
    assert redis_client.zscore(KEYS.dlq, job_id) is not None
    dead = job(redis_client, job_id)
    assert dead["attempt"] == "3" and int(redis_client.get("pooltest:crashes") or 0) == 3
    assert [msgspec.json.decode(dead[f"e{n}"])["type"] for n in (1, 2, 3)] == ["worker_death"] * 3
    assert runtime.proc.poll() is None  # the supervisor kept going
    assert integrity_problems(redis_url) == []


def test_supervisor_poison_job_is_dead_lettered_alone_and_its_neighbours_complete(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given one job that kills its process, in the middle of a backlog of short innocent jobs
    # worked on by two pools that run several at once and prefetch more
    cap = Settings().worker_lost_cap
    drafts = [Draft(type="count.job", args=[0.005]) for _ in range(200)]
    drafts.insert(60, Draft(type="poison.exit", options={"retry": {"max_attempts": 10}}))
    ids = enqueue(redis_url, *drafts)
    poison, innocent = ids[60], ids[:60] + ids[61:]
    runtime = start("--processes", "2", "--concurrency", "4", "--prefetch", "4", "--no-http")
    # When it has killed its process as often as the cap allows
    wait_until(lambda: set(states(redis_client, ids)) <= {"completed", "discarded"}, timeout_s=30,
               what="every job to complete or be discarded")
    # Then only the poison job is dead-lettered, after running alone `cap` times
    dead = [m.decode() for m in redis_client.zrange(KEYS.dlq, 0, -1)]
    assert dead == [poison], f"{len(dead)} dead-lettered: the poison job {'among them' * (poison in dead)}"
    assert completed(redis_client, innocent)
    assert job(redis_client, poison)["lost"] == str(cap)
    held_at_start = [int(n) for n in redis_client.lrange("pooltest:poison_runs", 0, -1)]
    assert held_at_start[-cap:] == [1] * cap and held_at_start.count(1) == cap, held_at_start
    # ...and no innocent job was charged a loss, or completed an attempt twice
    charged = {i: job(redis_client, i).get("lost") for i in innocent if job(redis_client, i).get("lost")}
    assert charged == {}
    done = {k.decode(): int(v) for k, v in redis_client.hgetall("pooltest:done").items()}
    assert max(done.values()) == 1
    assert all(done[f"{i}:{job(redis_client, i)['attempt']}"] == 1 for i in innocent)
    assert runtime.proc.poll() is None
    assert integrity_problems(redis_url) == []


def broker_call(redis_url: str, call: Callable[[Broker], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        client = Redis.from_url(redis_url)
        broker = Broker(client, Settings(redis_url=redis_url))
        try:
            return await call(broker)
        finally:
            await broker.close()
            await client.aclose()

    return asyncio.run(go())


def test_supervisor_a_suspect_runs_alone_without_waiting_for_the_backlog_to_drain(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a job claimed by a pool that is about to die beside others, and a live pool busy with
    # a backlog that keeps it so for several seconds
    (suspect,) = enqueue(redis_url, Draft(type="count.job", args=[0.005], options={"queue": "side"}))
    (claimed,) = broker_call(redis_url, lambda b: b.fetch(["side"], worker_id="gone", idle=True))
    assert claimed[b"id"].decode() == suspect
    backlog = enqueue(redis_url, *(Draft(type="count.job", args=[0.01]) for _ in range(1500)))
    start("--processes", "1", "--concurrency", "4", "--queues", "default,side", "--no-http")
    wait_until(lambda: "completed" in states(redis_client, backlog[:50]), what="the pool to be busy")
    # When that other process dies: the job must now run alone
    (lost,) = broker_call(redis_url, lambda b: b.fail_many(
        [Failure(job_id=suspect, verdict="worker_lost_shared", worker_id="gone")], now_ms=0))
    assert lost.state == "available"
    # Then the suspect runs (alone) long before the backlog is done: the busy pool makes way
    wait_until(lambda: job(redis_client, suspect)["state"] == "completed", timeout_s=30,
               what="the suspect to complete")
    not_started = sum(state == "available" for state in states(redis_client, backlog))
    assert not_started > 300, f"only {not_started} backlog jobs had not started when the suspect ran"
    assert "suspect" not in job(redis_client, suspect)
    wait_until(lambda: completed(redis_client, backlog), timeout_s=60, what="the backlog to complete")


def test_supervisor_stops_with_a_boot_error_when_handlers_do_not_import(start: Start) -> None:
    # Given a handlers module that raises at import
    runtime = start("--processes", "2", "--no-http", module="tests.fixtures.broken_handlers")
    # When, Then: a clear message, exit code 3, and no crash loop
    assert runtime.wait_exit(30) == EXIT_BOOT_ERROR
    log = runtime.log()
    assert "cannot import the handlers module 'tests.fixtures.broken_handlers'" in log
    assert "boom: this handlers module is broken on purpose" in log
    assert "could not boot" in log
    assert len(runtime.pool_pids()) == 2  # the first two only: nothing was respawned


def test_supervisor_recycles_a_pool_after_max_jobs_per_child(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given
    ids = enqueue(redis_url, *(Draft(type="pid.job") for _ in range(7)))
    # When
    runtime = start("--processes", "1", "--concurrency", "1", "--max-jobs-per-child", "3", "--no-http")
    # Then each process ran at most 3 jobs before it was replaced
    wait_until(lambda: completed(redis_client, ids), timeout_s=30, what="all jobs to complete")
    per_pid = Counter(int(p) for p in redis_client.lrange("pooltest:pids", 0, -1))
    assert sum(per_pid.values()) == 7
    assert len(per_pid) >= 3 and max(per_pid.values()) <= 3
    assert "recycling" in runtime.log()
    assert runtime.proc.poll() is None



def test_supervisor_second_signal_forces_exit_and_releases_jobs(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a job that would outlive a long drain
    (job_id,) = enqueue(redis_url, Draft(type="sleep.job", args=[60]))
    runtime = start("--processes", "1", "--no-http", "--drain-timeout", "60")
    wait_until(lambda: redis_client.sismember("pooltest:started", job_id), what="the job to start")
    # When the operator insists
    runtime.send(signal.SIGTERM)
    wait_until(lambda: "stopping; pools drain" in runtime.log(), what="the drain to begin")
    runtime.send(signal.SIGINT)
    # Then the supervisor exits at once, non-zero, and the job is back without a spent attempt
    assert runtime.wait_exit(15) == 1
    held = job(redis_client, job_id)
    assert (held["state"], held["attempt"]) == ("available", "0")
    assert integrity_problems(redis_url) == []


def test_supervisor_recycles_a_pool_above_max_memory(redis_url: str, redis_client: redis.Redis, start: Start) -> None:
    # Given a limit every process exceeds
    ids = enqueue(redis_url, *(Draft(type="pid.job") for _ in range(3)))
    # When
    runtime = start("--processes", "1", "--no-http", "--max-memory-mb", "1")
    # Then pools are replaced gracefully (SIGTERM, drain, exit 0) and the work still gets done
    wait_until(lambda: runtime.log().count("ended: exit code 0") >= 2, what="two graceful recycles")
    wait_until(lambda: completed(redis_client, ids), what="all jobs to complete")
    assert "is above 1 MB: recycling it" in runtime.log()
    assert "SIGKILL" not in runtime.log()


def test_supervisor_stuck_pool_lets_its_other_jobs_finish_first(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a sync job that will not stop at its timeout, and a job beside it that needs a while
    quick_retry = {"initial_interval": "PT0.1S", "jitter": False}
    (stuck,) = enqueue(redis_url, Draft(type="cpu.spin", args=[60], options={"timeout_ms": 500, "retry": quick_retry}))
    (sibling,) = enqueue(redis_url, Draft(type="sleep.job", args=[4]))
    start("--processes", "1", "--concurrency", "2", "--no-http", "--timeout-grace", "0.5", "--drain-timeout", "20")
    # When the stuck pool is replaced
    wait_until(lambda: completed(redis_client, [sibling]), timeout_s=30, what="the job beside it to complete")
    # Then the job beside it was given the drain grace: it completed in its first run, not cut short
    finished = job(redis_client, sibling)
    assert finished["attempt"] == "1" and "e1" not in finished, finished
    # and the stuck job's retry is due only after the pool's stop deadline, when its thread is gone
    retrying = job(redis_client, stuck)
    assert retrying["state"] == "retryable" and int(retrying["retry_delay_ms"]) >= (20 + 5 + 5 + 5) * 1000
    assert integrity_problems(redis_url) == []


def test_supervisor_start_hands_back_the_jobs_of_a_killed_runtime_at_once(
    redis_url: str, redis_client: redis.Redis, start: Start,
) -> None:
    # Given a runtime running two long jobs (the lease is a minute, there are no scheduler loops)
    ids = enqueue(redis_url, *(Draft(type="sleep.job", args=[60]) for _ in range(2)))
    first = start("--processes", "1", "--concurrency", "2", "--no-http", "--drain-timeout", "1")
    wait_until(lambda: redis_client.scard("pooltest:started") == 2, what="2 jobs running")
    (pool,) = first.pool_pids()
    # When the whole service is killed at once
    first.proc.kill()
    os.kill(pool, signal.SIGKILL)
    first.proc.wait(10)
    wait_until(lambda: not alive(pool), what="the pool to be gone")
    redis_client.delete("pooltest:started")
    # Then a new start on the same host hands their jobs back at once, and they run again
    second = start("--processes", "1", "--concurrency", "2", "--no-http", "--drain-timeout", "1")
    wait_until(lambda: all("e1" in job(redis_client, i) for i in ids), timeout_s=15, what="the held jobs to be back")
    # (each one runs alone next: nothing tells which of them killed its process)
    wait_until(lambda: redis_client.scard("pooltest:started") >= 1, what="a held job to run again")
    for job_id in ids:
        again = job(redis_client, job_id)
        assert msgspec.json.decode(again["e1"])["type"] == "worker_death"
        assert "lost" not in again  # nothing known about what ran: no loss charged
    # The recovery process says so once its hand-back has landed: possibly after the jobs ran
    wait_until(lambda: "of an earlier run is gone" in second.log(), timeout_s=10, what="the recovery's log line")


def _http_pids(runtime: Any) -> list[int]:
    return [int(p) for p in re.findall(r"started http process \S+ \(pid (\d+)\)", runtime.log())]


def test_supervisor_http_process_that_keeps_dying_is_respawned_with_backoff(start: Start) -> None:
    # Given a runtime whose HTTP process dies right after each start
    runtime = start("--processes", "1", "--http", f"127.0.0.1:{free_port()}")
    for n in range(4):
        pid = wait_until(lambda n=n: _http_pids(runtime)[n] if len(_http_pids(runtime)) > n else 0,
                         what=f"HTTP process {n + 1}")
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Then the respawns back off: after four quick deaths the next start waits seconds, not a tick
    wait_until(lambda: len(_http_pids(runtime)) >= 5, timeout_s=20, what="the fifth HTTP process")
    assert time.monotonic() - killed_at >= 3.0
    assert runtime.proc.poll() is None


def test_supervisor_serves_signals_and_the_watchdog_while_a_release_waits_on_redis(
    make_embedded_redis: Callable[..., Any], tmp_path: Path,
) -> None:
    # Given a runtime under a (fake) systemd watchdog, on a Redis of its own, running a job
    server = make_embedded_redis(persistence=False)
    url = server.start()
    client = redis.Redis.from_url(url)
    notify_dir = tempfile.mkdtemp(prefix="ojs-notify-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(os.path.join(notify_dir, "n"))
    pings: list[float] = []

    def collect() -> None:
        while True:
            try:
                data = listener.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    threading.Thread(target=collect, daemon=True).start()
    runtime = Runtime(url, "tests.fixtures.pool_handlers", "--processes", "1", "--no-http",
                      log_path=tmp_path / "ojs-run.log",
                      extra_env={"NOTIFY_SOCKET": os.path.join(notify_dir, "n"), "WATCHDOG_USEC": "400000"})
    try:
        runtime.wait_ready(1)
        (job_id,) = enqueue(url, Draft(type="sleep.job", args=[60]))
        wait_until(lambda: client.sismember("pooltest:started", job_id), what="the job to run")
        # When its pool dies while Redis does not answer for a few seconds
        client.execute_command("CLIENT", "PAUSE", "6000", "ALL")
        os.kill(runtime.pool_pids()[0], signal.SIGKILL)
        wait_until(lambda: "ended: signal SIGKILL" in runtime.log(), what="the pool to be reaped")
        seen = len(pings)
        # Then the supervisor keeps pinging the watchdog and handles a SIGTERM at once
        wait_until(lambda: len(pings) >= seen + 3, timeout_s=4, what="watchdog pings during the release")
        runtime.send(signal.SIGTERM)
        wait_until(lambda: "SIGTERM: stopping" in runtime.log(), timeout_s=3, what="the SIGTERM to be handled")
        # ...and the release still lands once Redis answers, before the supervisor exits
        assert runtime.wait_exit(30) == 0
        assert job(client, job_id)["state"] != "active"
    finally:
        runtime.stop()
        listener.close()
        print(runtime.log())
