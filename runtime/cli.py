"""Command-line entry points: `ojs-server` (the broker) and `ojs-run` (broker + workers)."""

from __future__ import annotations

import argparse
import faulthandler
import os
import re
import signal
import sys
from collections.abc import Callable

from runtime import fairness, handler_check, logs, reloader
from runtime.config import settings_from_env
from runtime.embedded_redis import EmbeddedRedisError
from runtime.envelope import QUEUE_PATTERN
from runtime.liveness import EXIT_BOOT_ERROR
from runtime.server import CannotListen, InsecureBinding, run
from runtime.server_workers import ServerWorkers
from runtime.supervisor import Supervisor, SupervisorConfig
from runtime.worker import PoolConfig


def _broker_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Open Job Spec broker on Redis.")
    parser.add_argument("--host", help="listen address (env OJS_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (env OJS_PORT; default 8080)")
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (env REDIS_URL); default: embedded Redis")
    parser.add_argument("--data-dir", help="embedded Redis data directory (env OJS_DATA_DIR; default "
                        "$XDG_STATE_HOME/ojs, else ~/.local/state/ojs)")
    parser.add_argument("--workers", type=_positive(int), metavar="N", default=_env("OJS_SERVER_WORKERS") or "1",
                        help="HTTP server processes on the one port, with SO_REUSEPORT (env OJS_SERVER_WORKERS; "
                        "default 1); the scheduler loops run in one of them")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _log_format_option(parser)
    return parser


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=logs.FORMATS, default=logs.default_format(),
                        help="text, or json: one JSON object per line (env OJS_LOG_FORMAT; default text)")


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's Python stack to stderr (the log), for a process
    that hangs; forked children inherit it. Only an explicit USR1 does this."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _start(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format, text_format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _stacks_on_sigusr1()
    settings = settings_from_env(host=args.host, port=args.port, redis_url=args.redis_url, data_dir=args.data_dir)
    try:
        if int(args.workers) > 1:
            return ServerWorkers(settings, int(args.workers)).run()
        run(settings)
    except (InsecureBinding, EmbeddedRedisError) as err:
        print(f"ojs: {err}", file=sys.stderr)
        return 2
    except CannotListen as err:
        print(f"ojs: {err.strerror}", file=sys.stderr)
        return EXIT_BOOT_ERROR
    except KeyboardInterrupt:
        pass
    return 0


def server_main(argv: list[str] | None = None) -> int:
    return _start(_broker_parser("ojs-server").parse_args(argv))


def _env(name: str, *aliases: str) -> str | None:
    for key in (name, *aliases):
        if os.environ.get(key):
            return os.environ[key]
    return None


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _queues(text: str) -> tuple[tuple[str, int], ...]:
    try:
        queues = fairness.parse_queues(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    for name, _weight in queues:
        if not re.fullmatch(QUEUE_PATTERN, name):
            raise argparse.ArgumentTypeError(f"invalid queue name {name!r} (lowercase, digits, '-' and '.')")
    return queues


def _positive(kind: type[int] | type[float], *, or_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0 or (value == 0 and not or_zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if or_zero else 'positive'}, got {text}")
        return value

    return parse


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ojs-run", description="Run job handlers: a supervisor, N pool processes, the HTTP "
        "endpoint and the scheduler loops (and an embedded Redis when no --redis is given).",
    )
    p.add_argument("module", help="the handlers module to import in each pool, e.g. handlers_example")
    p.add_argument("--check", action="store_true",
                   help="import the module, list its handlers (queues, options, signatures) and exit: "
                   "non-zero on a problem (an import error, a handler without ctx, an unknown queue in --queues)")
    p.add_argument("--reload", action="store_true",
                   help="development: restart the pools (draining their jobs) when a source file of the "
                   "handlers' package changes")
    p.add_argument("--queues", type=_queues, metavar="Q:W,...", default=_env("OJS_QUEUES"),
                   help="weighted queues, e.g. default:1,email:3 (env OJS_QUEUES; default: the "
                   "handlers' queues and default, weight 1)")
    p.add_argument("--strategy", choices=fairness.STRATEGIES, default=_env("OJS_STRATEGY") or fairness.WEIGHTED,
                   help="weighted (smooth weighted round robin) or strict (queue order) (env OJS_STRATEGY)")
    p.add_argument("--processes", type=_positive(int), metavar="N", default=_env("OJS_PROCESSES") or str(os.cpu_count() or 1),
                   help="pool processes (env OJS_PROCESSES; default: CPU count)")
    p.add_argument("--concurrency", type=_positive(int), metavar="C", default=_env("OJS_CONCURRENCY") or "10",
                   help="jobs in flight per pool process (env OJS_CONCURRENCY; default 10)")
    p.add_argument("--prefetch", type=_positive(int, or_zero=True), metavar="N", default=_env("OJS_PREFETCH"),
                   help="jobs a pool claims ahead of its free slots while its jobs are short (mean run "
                   "under 50 ms); 0: never (env OJS_PREFETCH; default: the concurrency)")
    p.add_argument("--redis", dest="redis_url", metavar="URL", help="Redis URL (env OJS_REDIS_URL, REDIS_URL); default: embedded")
    p.add_argument("--data-dir", help="embedded Redis data directory, kept across restarts (env OJS_DATA_DIR; "
                   "default $XDG_STATE_HOME/ojs, else ~/.local/state/ojs)")
    http = p.add_mutually_exclusive_group()
    http.add_argument("--http", type=_address, metavar="HOST:PORT", default=_env("OJS_HTTP"),
                      help="HTTP endpoint HOST:PORT (env OJS_HTTP; default OJS_HOST:OJS_PORT, 127.0.0.1:8080)")
    http.add_argument("--no-http", action="store_true", default=_env("OJS_NO_HTTP") in ("1", "true", "yes"),
                      help="no HTTP endpoint and no scheduler loops (run ojs-server elsewhere)")
    p.add_argument("--max-jobs-per-child", type=_positive(int), metavar="N", default=_env("OJS_MAX_JOBS_PER_CHILD"),
                   help="recycle a pool process after this many jobs (env OJS_MAX_JOBS_PER_CHILD)")
    p.add_argument("--max-memory-mb", type=_positive(int), metavar="M", default=_env("OJS_MAX_MEMORY_MB"),
                   help="recycle a pool process above this RSS (env OJS_MAX_MEMORY_MB)")
    p.add_argument("--drain-timeout", type=_positive(float), metavar="S", default=_env("OJS_DRAIN_TIMEOUT", "OJS_SHUTDOWN_TIMEOUT") or "25",
                   help="seconds running jobs get to finish on shutdown (env OJS_DRAIN_TIMEOUT; default 25)")
    p.add_argument("--timeout-grace", type=_positive(float), metavar="S", default=_env("OJS_TIMEOUT_GRACE") or "5",
                   help="seconds a sync handler past its timeout gets before its process is replaced "
                   "(env OJS_TIMEOUT_GRACE; default 5)")
    p.add_argument("--liveness-timeout", type=_positive(float), metavar="S", default=_env("OJS_LIVENESS_TIMEOUT") or "30",
                   help="seconds a pool's event loop may be blocked before it is killed "
                   "(env OJS_LIVENESS_TIMEOUT; default 30)")
    p.add_argument("--heartbeat-interval", type=_positive(float), metavar="S", default=_env("OJS_HEARTBEAT_INTERVAL") or "5",
                   help="seconds between heartbeats (env OJS_HEARTBEAT_INTERVAL; default 5)")
    p.add_argument("--lease", type=_positive(float), metavar="S", default=_env("OJS_LEASE") or "60",
                   help="seconds a claimed job stays leased without a heartbeat; heartbeats come at "
                   "least 3 times per lease (env OJS_LEASE; default 60)")
    p.add_argument("--metrics-port", type=_positive(int), metavar="PORT", default=_env("OJS_METRICS_PORT"),
                   help="also serve /metrics, /health and /ready (open paths, no API key) on this "
                   "port, e.g. with --no-http (env OJS_METRICS_PORT)")
    p.add_argument("--metrics-host", metavar="HOST", default=_env("OJS_METRICS_HOST"),
                   help="address of --metrics-port (env OJS_METRICS_HOST; default the HTTP host); "
                   "beyond loopback only with OJS_API_KEY or OJS_ALLOW_INSECURE_NO_AUTH=true")
    p.add_argument("--stall-timeout", type=_positive(float), metavar="S", default=_env("OJS_STALL_TIMEOUT") or "60",
                   help="/ready fails when no pool has fetched for this long; a pool with every slot "
                   "busy counts as fetching (env OJS_STALL_TIMEOUT; default 60)")
    p.add_argument("--log-level", default=(_env("OJS_LOG_LEVEL") or "info").lower(),
                   choices=["debug", "info", "warning", "error"])
    _log_format_option(p)
    return p


def _reload_paths(module: str) -> tuple[str, ...]:
    paths = reloader.source_paths(module)
    if not paths:  # the pools will say why it does not import
        print(f"ojs-run: --reload: cannot find the source of {module!r} to watch", file=sys.stderr)
    return paths


def run_main(argv: list[str] | None = None) -> int:
    """`ojs-run MODULE`: the supervisor, its pool processes and (unless --no-http) the broker."""
    args = _run_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format,
                   text_format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    _stacks_on_sigusr1()
    sys.path.insert(0, os.getcwd())  # like uvicorn and gunicorn: the app's modules are found from here
    if args.check:
        return handler_check.check(args.module, args.queues or ())
    host, port = args.http if args.http else (None, None)
    settings = settings_from_env(host=host, port=port, redis_url=args.redis_url, data_dir=args.data_dir)
    pool = PoolConfig(
        module=args.module, settings=settings, queues=args.queues or (), strategy=args.strategy,
        concurrency=int(args.concurrency), max_jobs=int(args.max_jobs_per_child or 0),
        drain_timeout_s=args.drain_timeout, timeout_grace_s=args.timeout_grace,
        heartbeat_interval_s=args.heartbeat_interval, lease_ms=round(args.lease * 1000),
        prefetch=None if args.prefetch is None else int(args.prefetch),
    )
    config = SupervisorConfig(
        processes=int(args.processes), http=not args.no_http, max_memory_mb=int(args.max_memory_mb or 0),
        liveness_timeout_s=args.liveness_timeout,
        metrics_port=int(args.metrics_port) if args.metrics_port else None, metrics_host=args.metrics_host,
        stall_s=args.stall_timeout, reload_paths=_reload_paths(args.module) if args.reload else (),
    )
    return Supervisor(pool, config=config).run()


if __name__ == "__main__":
    sys.exit(server_main())
