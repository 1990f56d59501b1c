"""CLI mirroring the official Go conformance runner's flags.

    python -m tests.conformance -url http://127.0.0.1:8080 -suites SUITES_DIR/level-0-core \\
        [-level N|ext] [-category C] [-test ID] [-redis URL] [-reset-url URL] \\
        [-tolerance PCT] [-timeout SEC] [-output table|json] [-report-file PATH] [-verbose]

Exit code: 0 when every selected test passed, 1 otherwise, 2 when the suites cannot be loaded
or no test matches the filters.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.conformance.runner import ConformanceError, run_suites

logger = logging.getLogger("tests.conformance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance",
                                     description="Run the OJS conformance suites over HTTP.")
    default_url = os.environ.get("OJS_TEST_URL", "http://localhost:8080")
    parser.add_argument("-url", "--url", default=default_url, help="base URL of the server")
    parser.add_argument("-suites", "--suites", default="./suites", help="test suite directory")
    parser.add_argument("-level", "--level", default=None, help="only this level (N or ext)")
    parser.add_argument("-category", "--category", default=None, help="only this category")
    parser.add_argument("-test", "--test", dest="test_id", default=None, help="only this test ID")
    parser.add_argument("-redis", "--redis", default=None, help="FLUSHDB this Redis before tests")
    parser.add_argument("-reset-url", "--reset-url", dest="reset_url", default=None,
                        help="POST this URL (no body) before every test")
    parser.add_argument("-tolerance", "--tolerance", type=float, default=50.0,
                        help="timing_ms.approximate tolerance percentage")
    parser.add_argument("-timeout", "--timeout", type=float, default=30.0,
                        help="HTTP client timeout in seconds")
    parser.add_argument("-output", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-report-file", "--report-file", dest="report_file", default=None,
                        help="also write the JSON report to this file")
    parser.add_argument("-verbose", "--verbose", action="store_true",
                        help="show expected/actual values of failures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_suites(
            args.url, args.suites, redis_url=args.redis, reset_url=args.reset_url,
            level=args.level, test_id=args.test_id, category=args.category,
            tolerance_pct=args.tolerance, timeout_s=args.timeout,
        )
    except ConformanceError as exc:
        logger.error("%s", exc)
        return 2
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table(verbose=args.verbose), end="")
    if args.report_file:
        Path(args.report_file).write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                          encoding="utf-8")
    return 0 if report.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
