"""What each system under test is: how it is installed, how its producer and workers are started.

The choices per peer (and why they are the fair ones) are written in each peer's script under
benchmarks/peers/ and summed up in ``settings`` here, which goes into the JSON and the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import envs

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PEERS_DIR = HERE / "peers"

# (env, redis url, processes, concurrency) -> argv of each worker process to start
WorkerCommands = Callable[[envs.Env, str, int, int], list[list[str]]]


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str  # project | python | node
    script: str  # producer script under benchmarks/peers/
    workers: WorkerCommands
    packages: tuple[str, ...] = ()
    dists: tuple[str, ...] = ()  # versions to report
    bulk: bool = True  # has a batch enqueue API
    settings: dict[str, str] = field(default_factory=dict)

    def ensure(self, *, reinstall: bool = False, log=lambda msg: None) -> envs.Env:
        if self.kind == "project":
            return envs.project_env()
        if self.kind == "node":
            return envs.ensure_node(self.name, list(self.packages), reinstall=reinstall, log=log)
        return envs.ensure_python(self.name, list(self.packages), list(self.dists), reinstall=reinstall, log=log)

    def producer(self, env: envs.Env, *args: str) -> list[str]:
        return [env.executable, str(PEERS_DIR / self.script), *args]

    def environ(self, env: envs.Env, redis_url: str, concurrency: int) -> dict[str, str]:
        out = dict(os.environ)
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NODE_PATH", "OJS_API_KEY"):
            out.pop(name, None)
        out["BENCH_REDIS_URL"] = redis_url
        out["BENCH_CONCURRENCY"] = str(concurrency)
        out["PYTHONUNBUFFERED"] = "1"
        if self.kind == "project":
            out["PYTHONPATH"] = str(REPO_ROOT)
        elif self.kind == "python":
            out["PYTHONPATH"] = str(PEERS_DIR)
            out["VIRTUAL_ENV"] = str(env.path)
            out["PATH"] = f"{env.path / 'bin'}{os.pathsep}{out.get('PATH', '')}"
        else:
            out["NODE_PATH"] = str(env.path / "node_modules")
        return out

    def cwd(self) -> Path:
        return REPO_ROOT if self.kind == "project" else PEERS_DIR


# --- worker launchers ---------------------------------------------------------------------------


def ojs_run() -> str:
    candidate = Path(sys.executable).parent / "ojs-run"
    return str(candidate) if candidate.exists() else "ojs-run"


def ojs_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[ojs_run(), "benchmarks.ojs_handlers", "--queues", "bench", "--processes", str(processes),
             "--concurrency", str(concurrency), "--redis", url, "--no-http"]]


def ojs_worker_status() -> str:
    """'' when `ojs-run` forks pool processes (the worker runtime has landed), else why not."""
    try:
        import runtime

        if not hasattr(runtime, "handler") or not hasattr(runtime, "JobContext"):
            return "worker runtime not available: `from runtime import handler, JobContext` fails"
    except ImportError as err:
        return f"worker runtime not available: {err}"
    try:
        out = subprocess.run([ojs_run(), "--help"], capture_output=True, text=True, timeout=60,
                             cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"worker runtime not available: ojs-run --help: {err}"
    text = out.stdout + out.stderr
    if "--processes" not in text or "--no-http" not in text:
        return "worker runtime not available: ojs-run has no --processes/--no-http yet (runtime/cli.py run_main)"
    return ""


def bullmq_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    script = str(PEERS_DIR / "bullmq_bench.js")
    return [[env.executable, script, "worker", "--redis", url, "--concurrency", str(concurrency)]
            for _ in range(processes)]


def dramatiq_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[env.bin("dramatiq"), "dramatiq_bench", "--processes", str(processes), "--threads", str(concurrency),
             "--queues", "bench", "--path", str(PEERS_DIR)]]


def arq_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[env.bin("arq"), "arq_bench.WorkerSettings"] for _ in range(processes)]


def saq_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[env.bin("saq"), "saq_bench.settings", "--workers", str(processes), "--quiet"]]


def celery_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[env.bin("celery"), "-A", "celery_bench", "worker", "--pool", "prefork", "--concurrency", str(processes),
             "-Q", "bench", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]]


def rq_workers(env: envs.Env, url: str, processes: int, concurrency: int) -> list[list[str]]:
    return [[env.bin("rq"), "worker-pool", "-n", str(processes), "-w", "rq.worker.SimpleWorker", "--url", url,
             "--quiet", "--path", str(PEERS_DIR), "bench"]]


HIREDIS = "redis[hiredis]"  # redis-py's C parser for every Python peer, as ojs has it

PEERS: dict[str, Peer] = {
    "ojs": Peer(
        "ojs", "project", "ojs_bench.py", ojs_workers,
        settings={
            "producer": "runtime.client.Client enqueue / enqueue_many (BENCH_OJS_API=broker: Broker.enqueue); HTTP: python -m runtime",
            "workers": "ojs-run --processes P --concurrency C --no-http",
            "retention": "completed jobs kept (job hash + events stream, defaults)",
            "delivery": "at least once (lease + heartbeat)",
        },
    ),
    "bullmq": Peer(
        "bullmq", "node", "bullmq_bench.js", bullmq_workers, packages=("bullmq", "ioredis"),
        settings={
            "producer": "queue.add / queue.addBulk (ioredis)",
            "workers": "P node processes, new Worker(..., {concurrency: C})",
            "retention": "completed jobs kept (BullMQ default)",
            "delivery": "at least once (lock + stalled-job check)",
        },
    ),
    "dramatiq": Peer(
        "dramatiq", "python", "dramatiq_bench.py", dramatiq_workers, packages=("dramatiq[redis]", HIREDIS),
        dists=("dramatiq", "redis", "hiredis"), bulk=False,
        settings={
            "producer": "actor.send (RedisBroker); no batch API",
            "workers": "dramatiq --processes P --threads C",
            "retention": "no results backend (dramatiq default)",
            "delivery": "at least once (ack after the actor returns, requeue of dead workers' messages)",
        },
    ),
    "arq": Peer(
        "arq", "python", "arq_bench.py", arq_workers, packages=("arq", HIREDIS),
        dists=("arq", "redis", "hiredis"), bulk=False,
        settings={
            "producer": "ArqRedis.enqueue_job; no batch API",
            "workers": "P arq processes, max_jobs=C, poll_delay=0.5 s (default: arq polls)",
            "retention": "results kept 3600 s (keep_result default)",
            "delivery": "at least once (in-progress key expires, job re-runs)",
        },
    ),
    "saq": Peer(
        "saq", "python", "saq_bench.py", saq_workers,
        # saq 0.26 imports typing_extensions without declaring it; saq[redis] pins redis<8
        packages=("saq[redis,hiredis]", "typing_extensions"),
        dists=("saq", "redis", "hiredis"), bulk=False,
        settings={
            "producer": "Queue.enqueue; no batch API",
            "workers": "saq --workers P, concurrency=C",
            "retention": "completed jobs kept 600 s (default)",
            "delivery": "at least once (sweeper retries a dead worker's jobs)",
        },
    ),
    "celery": Peer(
        "celery", "python", "celery_bench.py", celery_workers, packages=("celery[redis]", HIREDIS),
        dists=("celery", "kombu", "redis", "hiredis"), bulk=False,
        settings={
            "producer": "task.apply_async (kombu Redis transport); no batch API",
            "workers": "celery worker --pool prefork --concurrency P (1 task at a time per child), prefetch x4",
            "retention": "no result backend (task_ignore_result)",
            "delivery": "at least once (task_acks_late=True; Celery's default is at most once)",
        },
    ),
    "rq": Peer(
        "rq", "python", "rq_bench.py", rq_workers, packages=("rq", HIREDIS),
        dists=("rq", "redis", "hiredis"),
        settings={
            "producer": "Queue.enqueue / Queue.enqueue_many (one pipeline per batch)",
            "workers": "rq worker-pool -n P -w SimpleWorker (no fork per job; 1 job at a time per process)",
            "retention": "results kept 500 s (default)",
            "delivery": "weaker: a dead worker's job goes to the failed registry, not re-run",
        },
    ),
}

DEFAULT_PEERS = ("bullmq", "dramatiq", "arq", "saq", "celery", "rq")
