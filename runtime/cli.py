"""Command-line entry points: `ojs-server` (the broker) and `ojs-run` (broker + workers)."""

from __future__ import annotations

import argparse
import logging
import sys

from runtime.config import settings_from_env
from runtime.server import InsecureBinding, run


def _broker_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Open Job Spec broker on Redis.")
    parser.add_argument("--host", help="listen address (env OJS_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (env OJS_PORT; default 8080)")
    parser.add_argument("--redis", dest="redis_url", help="Redis URL (env REDIS_URL); default: embedded Redis")
    parser.add_argument("--data-dir", help="embedded Redis data directory (env OJS_DATA_DIR)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _start(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_env(host=args.host, port=args.port, redis_url=args.redis_url, data_dir=args.data_dir)
    try:
        run(settings)
    except InsecureBinding as err:
        print(f"ojs: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def server_main(argv: list[str] | None = None) -> int:
    return _start(_broker_parser("ojs-server").parse_args(argv))


def run_main(argv: list[str] | None = None) -> int:
    """`ojs-run MODULE`: until the worker runtime lands, imports MODULE and serves the broker."""
    parser = _broker_parser("ojs-run")
    parser.add_argument("module", help="the handlers module, e.g. handlers_example")
    args = parser.parse_args(argv)
    __import__(args.module)
    return _start(args)


if __name__ == "__main__":
    sys.exit(server_main())
