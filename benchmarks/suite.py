"""The comparison run: ojs and its peers, the same workloads on the same private Redis.

``python -m benchmarks run`` (see benchmarks/README.md, "Comparison with peers"). For each
repetition, for each system, for each workload: FLUSHALL, start what the workload needs, measure,
stop it. Systems are interleaved within a repetition, so a load spike on the machine hits one
repetition of everyone rather than every repetition of one system.

Workloads (N = ``--jobs``):

* ``w1_single``: the producer enqueues N jobs one call at a time (each awaited) through the
  system's own client API; ``w1_bulk``: the same N in batches of ``--batch`` through its batch API
  (n/a for systems without one). ojs also: ``w1_http_single`` / ``w1_http_bulk`` (the same through
  ``POST /ojs/v1/jobs`` / ``/jobs/batch`` of ``python -m runtime``, one connection) and
  ``w1_http_c16`` (single-job requests over 16 keep-alive connections). Jobs/s as the producer
  timed its loop, after a warm-up.
* ``w2_drain``: N no-op jobs enqueued first (not measured), then the workers start (P =
  ``--processes``, default 2): jobs/s from the first completion the harness sees to the last
  (it polls the handlers' INCR counter every 10 ms), so interpreter start-up and imports are
  left out (they are reported apart as ``startup_s``).
* ``w3_p50`` / ``w3_p99``: one idle worker process; ``--latency-jobs`` jobs enqueued one at a
  time, each after the previous one started and a ``--gap-ms`` pause; latency = the handler's
  start stamp minus the producer's stamp taken just before the enqueue call.

Each timed loop stops at N jobs or after ``--budget`` seconds (W3: ``--latency-budget``), so a slow
system costs seconds, not minutes; its figure is then the rate (or the latencies) over what it
did, and ``budget_hit`` says so.

Beside each figure: CPU seconds of Redis and of the workers (or producer and HTTP server) over the
measured window (psutil cpu_times of the processes, children included), the CPU the rest of the
machine used meanwhile, and Redis commands per job (INFO commandstats delta / jobs, without the
harness's own polling and without the handlers' one counting command).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks import envs, memory_row
from benchmarks.peerdefs import DEFAULT_PEERS, PEERS, REPO_ROOT, Peer, ojs_worker_status

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COUNTER = "bench:done"
POLL_S = 0.010
STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 30.0
OTHER_LOAD_WARNING = 0.15  # share of one core used by other processes that makes a figure suspect
HTTP_CONNECTIONS = 16

FIGURES: dict[str, dict[str, str]] = {
    "w1_single": {"title": "W1 enqueue, one at a time", "unit": "jobs/s", "better": "higher"},
    "w1_bulk": {"title": "W1 enqueue, batch API", "unit": "jobs/s", "better": "higher"},
    "w1_http_single": {"title": "W1 enqueue over HTTP, 1 job/request, 1 connection", "unit": "jobs/s",
                       "better": "higher"},
    "w1_http_bulk": {"title": "W1 enqueue over HTTP, batch requests, 1 connection", "unit": "jobs/s",
                     "better": "higher"},
    "w1_http_c16": {"title": f"W1 enqueue over HTTP, 1 job/request, {HTTP_CONNECTIONS} connections",
                    "unit": "req/s", "better": "higher"},
    "w2_drain": {"title": "W2 drain, no-op jobs", "unit": "jobs/s", "better": "higher"},
    "w2_backlog": {"title": "W2 drain off the head of a large backlog (the same N jobs timed)", "unit": "jobs/s",
                   "better": "higher"},
    "w3_p50": {"title": "W3 enqueue-to-start latency p50", "unit": "ms", "better": "lower"},
    "w3_p99": {"title": "W3 enqueue-to-start latency p99", "unit": "ms", "better": "lower"},
    "mem_bytes_per_job": {"title": "Redis memory per waiting job (batch API)", "unit": "bytes", "better": "lower"},
    "mem_worker_rss": {"title": "RSS of an idle worker process", "unit": "MiB", "better": "lower"},
}

# The performance issue's targets for ojs, for the report: figure -> [(op, value, against), ...].
# `against` a peer: ojs's ratio to it (for latency and memory, the peer's figure over ojs's, so
# above 1 is better); a figure of ojs's own: the ratio of the two; None: the value.
TARGETS: dict[str, list[tuple[str, float, str | None]]] = {
    "w2_drain": [(">=", 2.5, "bullmq")],
    "w2_backlog": [(">=", 0.9, "w2_drain")],  # no cost that grows with the queue
    "w1_single": [(">=", 1.5, "bullmq")],
    "w1_bulk": [(">=", 1.6, "bullmq")],
    "w3_p50": [(">=", 1.0, "bullmq"), ("<=", 1.0, None)],  # at most BullMQ's, and at most 1 ms
    "w3_p99": [(">=", 2.0, "bullmq")],  # at least twice better
    "mem_bytes_per_job": [(">=", 1.0, "bullmq")],  # at most as many bytes as BullMQ
}


def target_table() -> dict[str, list[dict[str, Any]]]:
    """TARGETS as the JSON holds them: figure -> a list of {op, value, against}."""
    return {figure: [{"op": op, "value": value, "against": against} for op, value, against in wanted]
            for figure, wanted in TARGETS.items()}


@dataclass
class Options:
    jobs: int = 20_000
    reps: int = 3
    peers: tuple[str, ...] = DEFAULT_PEERS
    latency_jobs: int = 500
    budget_s: float = 10.0  # W1 loops and W2 drains stop at N jobs or after this long
    latency_budget_s: float = 10.0
    gap_ms: float = 10.0
    batch: int = 1000
    processes: int = 2
    concurrency: int = 10
    step_timeout_s: float = 300.0
    include_ojs: bool = True
    reinstall: bool = False
    smoke: bool = False
    json_path: Path = RESULTS_DIR / "latest.json"
    chart: bool = True
    quiet: bool = False
    workloads: tuple[str, ...] = ("w1", "w2", "w3", "backlog", "mem")
    memory_jobs: int = 100_000  # the memory row's waiting jobs (benchmarks/memory_row.py)
    backlog: int = 1_000_000  # jobs waiting when the backlog drain starts (ojs only)


class StepFailed(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Processes


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: the kernel sends SIGTERM to the child if the harness dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


def spawn(argv: list[str], *, env: dict[str, str], cwd: Path, log: Any, pipes: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, cwd=cwd, env=env, text=True, bufsize=1,
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else log, stderr=log,
        start_new_session=True,  # own process group: stop() reaches the pool's children too
        preexec_fn=_die_with_parent(),  # noqa: PLW1509 - prctl only
    )


def stop_group(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (a pool's children)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and all their descendants, reaped children included (so a
    child that exits inside the window still counts, through its parent)."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    return total


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + getattr(t, "nice", 0.0) + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


class Producer:
    """A producer script speaking the READY / GO / JSON / BYE protocol (peers/_common.py)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Any) -> None:
        self.proc = spawn(argv, env=env, cwd=cwd, log=log, pipes=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise StepFailed(f"no answer from the producer in {timeout_s:.0f} s") from None
            if got is None:
                raise StepFailed(f"the producer exited (code {self.proc.wait()})")
            if got.strip():
                return got.strip()

    def result(self, timeout_s: float) -> dict[str, Any]:
        text = self.line(timeout_s)
        try:
            data = json.loads(text)
        except ValueError:
            raise StepFailed(f"the producer printed {text[:200]!r}") from None
        if "error" in data:
            raise StepFailed(str(data["error"]))
        return data

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def finish(self) -> None:
        self.send("BYE")
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, 1.0)
        stop_group(self.proc, 1.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Measuring a window


class Window:
    """CPU and Redis commands between start() and stop()."""

    def __init__(self, bench: Bench, pids: dict[str, list[int]]) -> None:
        self.bench, self.pids = bench, pids

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = {name: tree_cpu_s(p) for name, p in self.pids.items()}
        self.redis0 = self.bench.redis_cpu_s()
        self.machine0 = machine_busy_s()
        self.harness0 = time.process_time()
        self.cmd0 = self.bench.commandstats()

    def stop(self, jobs: int, *, own: dict[str, int] | None = None) -> dict[str, Any]:
        cmd1 = self.bench.commandstats()
        machine1 = machine_busy_s()
        redis1 = self.bench.redis_cpu_s()
        cpu1 = {name: tree_cpu_s(p) for name, p in self.pids.items()}
        wall = time.perf_counter() - self.t0
        cpu = {name: max(0.0, cpu1[name] - self.cpu0[name]) for name in cpu1}
        cpu["redis"] = redis1 - self.redis0
        harness = time.process_time() - self.harness0  # this process (the poller): not a party
        measured = sum(cpu.values())
        other = max(0.0, (machine1 - self.machine0) - measured - harness)
        delta = {name: cmd1.get(name, 0) - self.cmd0.get(name, 0) for name in cmd1}
        for name, count in (own or {}).items():
            delta[name] = delta.get(name, 0) - count
        delta = {k: v for k, v in delta.items() if v > 0}
        jobs = max(1, jobs)
        return {
            "window_s": round(wall, 4),
            "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
            "cpu_us_per_job": {k: round(v / jobs * 1e6, 1) for k, v in cpu.items()},
            "cpu_us_per_job_total": round(measured / jobs * 1e6, 1),
            "other_load": round(other / wall, 3) if wall > 0 else None,  # cores' worth of other work
            "harness_load": round(harness / wall, 3) if wall > 0 else None,
            "commands_per_job": round(sum(delta.values()) / jobs, 3),
            "evalsha_per_job": round((delta.get("evalsha", 0) + delta.get("eval", 0)) / jobs, 3),
            "per_command": {k: round(v / jobs, 3) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
                            if v / jobs >= 0.001},
        }


# --------------------------------------------------------------------------------------------
# The harness


@dataclass
class PeerState:
    peer: Peer
    env: envs.Env | None = None
    skip: dict[str, str] = field(default_factory=dict)  # workload -> why


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.redis_server: Any = None
        self.redis: redis.Redis | None = None
        self.redis_proc: psutil.Process | None = None
        self.logdir = Path(tempfile.mkdtemp(prefix="ojs-bench-logs-"))
        self.progress = ProgressLine(enabled=not opts.quiet)
        self.own_gets = 0
        self.notes: list[str] = []

    # -- Redis ---------------------------------------------------------------------------------

    def start_redis(self) -> str:
        from runtime.embedded_redis import EmbeddedRedis

        self.redis_server = EmbeddedRedis(persistence=False)
        url = self.redis_server.start()
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.redis_proc = psutil.Process(self.redis_server.pid)
        return str(url)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.close()
        if self.redis_server is not None:
            self.redis_server.stop()

    @property
    def url(self) -> str:
        return str(self.redis_server.url)

    def redis_cpu_s(self) -> float:
        assert self.redis_proc is not None
        t = self.redis_proc.cpu_times()
        return float(t.user + t.system)

    def commandstats(self) -> dict[str, int]:
        assert self.redis is not None
        stats = self.redis.info("commandstats")
        return {key.removeprefix("cmdstat_").lower(): int(v["calls"]) for key, v in stats.items()
                if key.removeprefix("cmdstat_").lower() != "info"}

    def redis_version(self) -> dict[str, Any]:
        assert self.redis is not None
        info = self.redis.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return {"name": name, "version": info.get("valkey_version") or info.get("redis_version"),
                "executable": info.get("executable"), "persistence": "off (no AOF, no RDB)"}

    def flush(self) -> None:
        assert self.redis is not None
        self.redis.flushall()

    # -- logs ----------------------------------------------------------------------------------

    def log_file(self, name: str) -> Any:
        return open(self.logdir / f"{name}.log", "a")  # noqa: SIM115 - closed by the caller

    def log_tail(self, name: str, lines: int = 12) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- workloads -----------------------------------------------------------------------------

    def run_w1(self, state: PeerState, figure: str, *, kind: str, api: str = "python",
               connections: int = 1) -> dict[str, Any]:
        peer, env = state.peer, state.env
        assert env is not None
        self.flush()
        label = f"{peer.name}-{figure}"
        server = None
        log = self.log_file(label)
        try:
            extra: list[str] = []
            pids: dict[str, list[int]] = {}
            if api == "http":
                server = self.start_http_server(log)
                extra = ["--api", "http", "--url", server[1], "--connections", str(connections)]
                pids["server"] = [server[0].pid]
            prod = Producer(peer.producer(env, *extra, "enqueue", "--kind", kind, "--jobs", str(self.opts.jobs),
                                          "--batch", str(self.opts.batch), "--budget-s", str(self.opts.budget_s),
                                          "--redis", self.url),
                            peer.environ(env, self.url, self.opts.concurrency), peer.cwd(), log)
            try:
                first = prod.line(READY_TIMEOUT_S * 2)
                if first != "READY":
                    data = json.loads(first) if first.startswith("{") else {"error": first}
                    raise StepFailed(str(data.get("error", first)))
                pids["producer"] = [prod.proc.pid]
                window = Window(self, pids)
                window.start()
                prod.send("GO")
                data = prod.result(self.opts.step_timeout_s)
                measured = window.stop(int(data["jobs"]))
            finally:
                prod.finish()
            rate = data["jobs"] / data["seconds"]
            return {figure: rate, "_detail": {"jobs": data["jobs"], "seconds": round(data["seconds"], 4),
                                              "jobs_per_s": round(rate, 1),
                                              "budget_hit": bool(data.get("budget_hit")), **measured}}
        except StepFailed as err:
            raise StepFailed(f"{err}\n{self.log_tail(label)}") from None
        finally:
            if server is not None:
                stop_group(server[0])
            log.close()

    def start_http_server(self, log: Any) -> tuple[subprocess.Popen[Any], str]:
        port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.pop("OJS_API_KEY", None)
        proc = spawn([sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", str(port),
                      "--redis", self.url, "--log-level", "warning"], env=env, cwd=REPO_ROOT, log=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StepFailed(f"the HTTP server exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return proc, url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        stop_group(proc)
        raise StepFailed("the HTTP server did not become ready")

    def prefill(self, state: PeerState, log: Any, jobs: int | None = None) -> tuple[int, float]:
        """N jobs for the drain, or what the producer made in 1.5 budgets (a slow producer):
        (jobs, seconds). With `jobs` (the backlog): that many, with no budget but the step timeout."""
        peer, env = state.peer, state.env
        assert env is not None
        budget_s = self.opts.budget_s * 1.5 if jobs is None else 0.0
        prod = Producer(peer.producer(env, "prefill", "--jobs", str(jobs or self.opts.jobs), "--batch", str(self.opts.batch),
                                      "--budget-s", str(budget_s), "--redis", self.url),
                        peer.environ(env, self.url, self.opts.concurrency), peer.cwd(), log)
        try:
            data = prod.result(self.opts.step_timeout_s if jobs is None else max(self.opts.step_timeout_s, jobs / 1_000))
        finally:
            stop_group(prod.proc, 5.0)
        return int(data["jobs"]), float(data["seconds"])

    def start_workers(self, state: PeerState, processes: int, log: Any) -> list[subprocess.Popen[Any]]:
        peer, env = state.peer, state.env
        assert env is not None
        environ = peer.environ(env, self.url, self.opts.concurrency)
        return [spawn(argv, env=environ, cwd=peer.cwd(), log=log)
                for argv in peer.workers(env, self.url, processes, self.opts.concurrency)]

    def run_w2(self, state: PeerState, *, backlog: int | None = None) -> dict[str, Any]:
        """The drain; with `backlog`, that many jobs wait and the first N (--jobs) off its head
        are timed (the rest are left when the workers stop): figure ``w2_backlog``."""
        self.flush()
        figure = "w2_drain" if backlog is None else "w2_backlog"
        label = f"{state.peer.name}-{figure}"
        log = self.log_file(label)
        workers: list[subprocess.Popen[Any]] = []
        try:
            waiting, prefill_s = self.prefill(state, log, backlog)
            if backlog is not None and waiting < backlog:
                raise StepFailed(f"the backlog prefill made {waiting} of {backlog} jobs")
            n = waiting if backlog is None else min(self.opts.jobs, waiting)
            self.progress.total = n
            assert self.redis is not None
            launched = time.perf_counter()
            workers = self.start_workers(state, self.opts.processes, log)
            window = Window(self, {"workers": [w.pid for w in workers]})
            gets = 0
            first_t = 0.0
            first_count = 0
            gets_at_first = 0
            budget_hit = False
            deadline = launched + self.opts.step_timeout_s
            count = 0
            self.progress.counter = lambda: count
            while True:
                now = time.perf_counter()
                count = int(self.redis.get(COUNTER) or 0)
                gets += 1
                if count and not first_t:
                    first_t, first_count = now, count
                    window.start()
                    gets_at_first = gets
                done = count if backlog is None else count - first_count  # the backlog: N timed jobs
                if first_t and now - first_t > self.opts.budget_s and done < n:
                    budget_hit = True
                if (first_t and done >= n) or budget_hit:
                    end_t = now
                    measured = window.stop(count - first_count,
                                           own={"get": gets - gets_at_first, "incr": count - first_count})
                    break
                if now > deadline:
                    raise StepFailed(f"drain not finished in {self.opts.step_timeout_s:.0f} s ({count}/{n} jobs)")
                if all(w.poll() is not None for w in workers):
                    raise StepFailed(f"the workers exited ({count}/{n} jobs done)")
                time.sleep(POLL_S)
            counted = count - first_count
            span = end_t - first_t
            if counted <= 0 or span <= 0:
                raise StepFailed("the drain finished before the first poll saw it; use more --jobs")
            rate = counted / span
            extra = {} if backlog is None else {"backlog": waiting}
            return {figure: rate, "_detail": {
                **extra, "jobs": n, "jobs_timed": counted, "budget_hit": budget_hit, "seconds": round(span, 4),
                "jobs_per_s": round(rate, 1),
                "startup_s": round(first_t - launched, 3), "launch_to_last_s": round(end_t - launched, 3),
                "prefill_s": round(prefill_s, 3), "completed": count, **measured}}
        except StepFailed as err:
            raise StepFailed(f"{err}\n{self.log_tail(label)}") from None
        finally:
            self.progress.counter = None
            for w in workers:
                stop_group(w)
            log.close()

    def run_w3(self, state: PeerState) -> dict[str, Any]:
        peer, env = state.peer, state.env
        assert env is not None
        self.flush()
        label = f"{peer.name}-w3"
        log = self.log_file(label)
        workers: list[subprocess.Popen[Any]] = []
        try:
            workers = self.start_workers(state, 1, log)
            warmup = 10
            prod = Producer(peer.producer(env, "latency", "--jobs", str(self.opts.latency_jobs), "--warmup", str(warmup),
                                          "--gap-ms", str(self.opts.gap_ms), "--budget-s", str(self.opts.latency_budget_s),
                                          "--redis", self.url),
                            peer.environ(env, self.url, self.opts.concurrency), peer.cwd(), log)
            try:
                first = prod.line(120.0)
                if first != "READY":
                    data = json.loads(first) if first.startswith("{") else {"error": first}
                    raise StepFailed(str(data.get("error", first)))
                window = Window(self, {"workers": [w.pid for w in workers], "producer": [prod.proc.pid]})
                window.start()
                prod.send("GO")
                data = prod.result(self.opts.latency_budget_s + self.opts.step_timeout_s)
                samples = sorted(x / 1e6 for x in data["latencies_ns"])
                n = len(samples)
                measured = window.stop(n, own={"rpush": n, "blpop": n})
            finally:
                prod.finish()
            if not samples:
                raise StepFailed("no latency sample")
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            return {"w3_p50": p50, "w3_p99": p99, "_detail": {
                "jobs": n, "lost": data.get("lost", 0), "clock": data.get("clock"),
                "budget_hit": n + int(data.get("lost", 0)) < self.opts.latency_jobs,
                "p50_ms": round(p50, 3), "p90_ms": round(percentile(samples, 0.9), 3), "p99_ms": round(p99, 3),
                "max_ms": round(samples[-1], 3), "mean_ms": round(statistics.fmean(samples), 3),
                "min_ms": round(samples[0], 3), **measured}}
        except StepFailed as err:
            raise StepFailed(f"{err}\n{self.log_tail(label)}") from None
        finally:
            for w in workers:
                stop_group(w)
            log.close()


def percentile(ordered: list[float], q: float) -> float:
    rank = (len(ordered) - 1) * q
    low, high = int(rank), min(len(ordered) - 1, int(rank) + 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------------------------
# Progress


class ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, a line per step otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.label = ""
        self.started = 0.0
        self.counter: Callable[[], int] | None = None
        self.total = 0
        self._stop = threading.Event()
        if self.tty:
            threading.Thread(target=self._tick, daemon=True).start()

    def step(self, label: str, total: int = 0) -> None:
        self.label, self.total, self.started = label, total, time.monotonic()
        if self.enabled and not self.tty:
            print(f"  {label} ...", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        print(f"  {self.label}: {text} ({elapsed:.1f} s)", file=sys.stderr, flush=True)
        self.label = ""

    def say(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                sys.stderr.write("\r\x1b[K")
            print(text, file=sys.stderr, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            if not self.label:
                continue
            elapsed = time.monotonic() - self.started
            extra = ""
            counter = self.counter
            if counter is not None and self.total:
                with contextlib.suppress(Exception):
                    done = counter()
                    width = 24
                    filled = int(width * min(1.0, done / self.total))
                    extra = f" [{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,}"
            sys.stderr.write(f"\r\x1b[K  {self.label}{extra} {elapsed:.1f} s")
            sys.stderr.flush()

    def close(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------------------------
# Aggregation


def aggregate(values: list[float]) -> dict[str, float | int]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ojs's figure over each peer's, oriented so that > 1 means ojs is better (faster, or lower
    latency: peer / ojs)."""
    out: dict[str, dict[str, float]] = {}
    ojs = results.get("ojs", {})
    for figure, meta in FIGURES.items():
        mine = ojs.get(figure, {}).get("median")
        if not mine:
            continue
        row = {}
        for peer, figs in results.items():
            if peer == "ojs":
                continue
            theirs = figs.get(figure, {}).get("median")
            if not theirs:
                continue
            row[peer] = round(mine / theirs if meta["better"] == "higher" else theirs / mine, 3)
        if row:
            out[figure] = row
    return out


def steps_for(state: PeerState, opts: Options) -> list[tuple[str, Callable[[Bench, PeerState], dict[str, Any]]]]:
    out: list[tuple[str, Callable[[Bench, PeerState], dict[str, Any]]]] = []
    if "w1" in opts.workloads:
        out.append(("w1_single", lambda b, s: b.run_w1(s, "w1_single", kind="single")))
        if state.peer.bulk:
            out.append(("w1_bulk", lambda b, s: b.run_w1(s, "w1_bulk", kind="bulk")))
        if state.peer.name == "ojs":
            out.append(("w1_http_single", lambda b, s: b.run_w1(s, "w1_http_single", kind="single", api="http")))
            out.append(("w1_http_bulk", lambda b, s: b.run_w1(s, "w1_http_bulk", kind="bulk", api="http")))
            out.append(("w1_http_c16", lambda b, s: b.run_w1(s, "w1_http_c16", kind="single", api="http",
                                                              connections=HTTP_CONNECTIONS)))
    if "w2" in opts.workloads and "w2_drain" not in state.skip:
        out.append(("w2_drain", lambda b, s: b.run_w2(s)))
    if "backlog" in opts.workloads and state.peer.name == "ojs" and "w2_drain" not in state.skip:
        out.append(("w2_backlog", lambda b, s: b.run_w2(s, backlog=opts.backlog)))
    if "w3" in opts.workloads and "w3_p50" not in state.skip:
        out.append(("w3_latency", lambda b, s: b.run_w3(s)))
    if "mem" in opts.workloads and "w2_drain" not in state.skip:
        out.append(("memory", lambda b, s: memory_row.run_memory(b, s)))
    return out


def _fmt_step(result: dict[str, Any]) -> str:
    parts = []
    for key, value in result.items():
        if key.startswith("_"):
            continue
        unit = FIGURES[key]["unit"]
        parts.append(f"{value:,.2f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}")
    detail = result.get("_detail", {})
    if detail.get("other_load") is not None and detail["other_load"] > OTHER_LOAD_WARNING:
        parts.append(f"other load {detail['other_load']:.2f} cores!")
    return ", ".join(parts)


def run(opts: Options) -> dict[str, Any]:
    """The whole comparison; returns (and writes) the results document."""
    from benchmarks.http_throughput import machine_info

    started_at = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    bench = Bench(opts)
    progress = bench.progress
    names = (["ojs"] if opts.include_ojs else []) + [p for p in opts.peers if p != "ojs"]
    states: dict[str, PeerState] = {}
    peers_doc: dict[str, Any] = {}
    for name in names:
        peer = PEERS[name]
        progress.say(f"environment: {name}")
        env = peer.ensure(reinstall=opts.reinstall, log=progress.say)
        state = PeerState(peer, env)
        peers_doc[name] = {"installed": env.ok, "error": env.error, "versions": env.versions or {},
                           "install_s": round(env.install_s, 1), "env": str(env.path), "settings": peer.settings,
                           "skipped": {}}
        if not env.ok:
            progress.say(f"  {name}: {env.error.splitlines()[0]} -- left out")
            continue
        if name == "ojs":
            why = ojs_worker_status()
            if why:
                state.skip = {"w2_drain": why, "w3_p50": why, "w3_p99": why}
                progress.say(f"  ojs: W2/W3 skipped: {why}")
        peers_doc[name]["skipped"] = dict(state.skip)
        states[name] = state

    machine = machine_info()
    url = bench.start_redis()
    progress.say(f"private Redis at {url} (pid {bench.redis_server.pid}); logs in {bench.logdir}")
    raw: dict[str, dict[str, list[float]]] = {name: {} for name in states}
    details: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in states}
    failures: dict[str, dict[str, list[str]]] = {name: {} for name in states}
    plan = [(rep, name, step, fn) for rep in range(opts.reps) for name, st in states.items()
            for step, fn in steps_for(st, opts)]
    def logs_kept() -> str:
        if any(failures.values()):
            return str(bench.logdir)
        import shutil

        shutil.rmtree(bench.logdir, ignore_errors=True)
        return ""

    try:
        for index, (rep, name, step, fn) in enumerate(plan, 1):
            total = opts.jobs if step in ("w2_drain", "w2_backlog") else 0
            progress.step(f"[{index}/{len(plan)}] rep {rep + 1}/{opts.reps} {name} {step}", total)
            try:
                result = fn(bench, states[name])
            except StepFailed as err:
                message = str(err).strip()
                failures[name].setdefault(step, []).append(message)
                progress.done("FAILED: " + message.splitlines()[0])
                continue
            except Exception as err:  # a harness bug must not lose the other peers' figures
                failures[name].setdefault(step, []).append(f"{type(err).__name__}: {err}")
                progress.done(f"FAILED: {type(err).__name__}: {err}")
                continue
            detail = result.pop("_detail", {})
            detail["rep"] = rep + 1
            details[name].setdefault(step, []).append(detail)
            for figure, value in result.items():
                raw[name].setdefault(figure, []).append(value)
            progress.done(_fmt_step({**result, "_detail": detail}))
        redis_info = bench.redis_version()
    finally:
        bench.stop_redis()
        progress.close()

    results: dict[str, dict[str, Any]] = {}
    for name in states:
        results[name] = {}
        for figure, values in raw[name].items():
            results[name][figure] = {**aggregate(values), "values": [round(v, 4) for v in values],
                                     "unit": FIGURES[figure]["unit"]}
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "version": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t_start, 1),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]) if sys.argv else "",
        "settings": {
            "jobs": opts.jobs, "reps": opts.reps, "batch": opts.batch, "processes": opts.processes,
            "backlog": opts.backlog if "backlog" in opts.workloads else None,
            "concurrency": opts.concurrency, "latency_jobs": opts.latency_jobs,
            "latency_budget_s": opts.latency_budget_s, "budget_s": opts.budget_s, "gap_ms": opts.gap_ms, "smoke": opts.smoke,
            "http_connections": HTTP_CONNECTIONS, "poll_ms": POLL_S * 1000, "memory_jobs": opts.memory_jobs,
        },
        "machine": machine,
        "redis": redis_info,
        "figures": FIGURES,
        "targets": target_table(),
        "peers": peers_doc,
        "results": results,
        "ratios": ratios(results),
        "details": details,
        "failures": {k: v for k, v in failures.items() if v},
        "notes": bench.notes,
        "logs": logs_kept(),  # the processes' output, kept when something failed
    }
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc
