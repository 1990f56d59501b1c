"""``python -m benchmarks run|report|install``: ojs side by side with BullMQ, dramatiq, arq, SAQ,
Celery and RQ on one private Redis. See benchmarks/README.md, "Comparison with peers"."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.peerdefs import DEFAULT_PEERS, PEERS


def _peers(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure ojs and the peers, write results/latest.json and .png")
    run.add_argument("--jobs", "-n", type=int, default=20_000, help="jobs per workload (default 20000)")
    run.add_argument("--reps", type=int, default=3, help="repetitions; the table shows the median (default 3)")
    run.add_argument("--peers", type=_peers, default=DEFAULT_PEERS,
                     help=f"comma-separated, default {','.join(DEFAULT_PEERS)}; 'none' for ojs alone")
    run.add_argument("--no-ojs", action="store_true", help="leave ojs out (peers only)")
    run.add_argument("--workloads", default="w1,w2,w3,mem", help="subset of w1,w2,w3,mem")
    run.add_argument("--memory-jobs", type=int, default=100_000,
                     help="the memory row's waiting jobs (default 100000)")
    run.add_argument("--latency-jobs", type=int, default=500, help="W3 jobs (default 500)")
    run.add_argument("--budget", type=float, default=10.0,
                     help="W1 loops and W2 drains stop at N jobs or after this many seconds (default 10)")
    run.add_argument("--latency-budget", type=float, default=10.0,
                     help="W3: stop after this many seconds per system and rep (default 10)")
    run.add_argument("--gap-ms", type=float, default=10.0, help="W3: idle pause before each job (default 10)")
    run.add_argument("--batch", type=int, default=1000, help="jobs per batch call (default 1000)")
    run.add_argument("--processes", type=int, default=2, help="W2 worker processes (default 2)")
    run.add_argument("--concurrency", type=int, default=10,
                     help="jobs at once per worker process, where the system has such a setting (default 10)")
    run.add_argument("--step-timeout", type=float, default=300.0, help="time limit of one measurement (s)")
    run.add_argument("--smoke", action="store_true",
                     help="500 jobs, 1 rep, ojs only, 100 latency jobs, results/smoke.json, no chart")
    run.add_argument("--json", type=Path, help="where to write the results (default results/latest.json)")
    run.add_argument("--no-chart", action="store_true", help="skip the PNG")
    run.add_argument("--no-report", action="store_true", help="do not rewrite RESULTS.md / the README block")
    run.add_argument("--reinstall", action="store_true", help="rebuild the peers' environments")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    report = sub.add_parser("report", help="rewrite benchmarks/RESULTS.md (and the README block) from the JSON")
    report.add_argument("--json", type=Path, help="default results/latest.json")
    report.add_argument("--chart", action="store_true", help="also redraw the PNG")

    install = sub.add_parser("install", help="install the peers' environments only")
    install.add_argument("--peers", type=_peers, default=DEFAULT_PEERS)
    install.add_argument("--reinstall", action="store_true")
    return parser.parse_args(argv)


def _peers_arg(argv: list[str] | None) -> list[str] | None:
    """`--peers none` means ojs alone (argparse's type would reject it)."""
    if argv is None:
        argv = sys.argv[1:]
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--peers" and i + 1 < len(out) and out[i + 1].strip().lower() in ("none", ""):
            out[i + 1] = "ojs"
        elif arg.startswith("--peers=") and arg.split("=", 1)[1].strip().lower() in ("none", ""):
            out[i] = "--peers=ojs"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_peers_arg(argv))
    from benchmarks import report, suite

    if args.command == "install":
        ok = True
        for name in args.peers:
            env = PEERS[name].ensure(reinstall=args.reinstall, log=print)
            print(f"{name}: {'ok ' + str(env.versions) if env.ok else env.error} ({env.path})")
            ok = ok and env.ok
        return 0 if ok else 1

    if args.command == "report":
        path = args.json or suite.RESULTS_DIR / "latest.json"
        doc = json.loads(path.read_text())
        report.print_report(doc)
        for written in report.write_results(doc):
            print(f"wrote {written}")
        if args.chart:
            from benchmarks import chart

            why = chart.render(path, path.with_suffix(".png"))
            print(why or f"wrote {path.with_suffix('.png')}")
        return 0

    opts = suite.Options(
        jobs=args.jobs, reps=args.reps, peers=tuple(p for p in args.peers if p != "ojs"),
        include_ojs=not args.no_ojs, workloads=tuple(w.strip() for w in args.workloads.split(",") if w.strip()),
        latency_jobs=args.latency_jobs, budget_s=args.budget, latency_budget_s=args.latency_budget, gap_ms=args.gap_ms,
        batch=args.batch, processes=args.processes, concurrency=args.concurrency,
        step_timeout_s=args.step_timeout, reinstall=args.reinstall, quiet=args.quiet,
        chart=not args.no_chart, memory_jobs=args.memory_jobs,
    )
    if args.smoke:
        opts.jobs, opts.reps, opts.peers, opts.include_ojs = 500, 1, (), True
        opts.latency_jobs, opts.smoke, opts.chart = 100, True, False
        opts.memory_jobs = 2_000
        opts.json_path = suite.RESULTS_DIR / "smoke.json"
    if args.json:
        opts.json_path = args.json
    doc = suite.run(opts)
    report.print_report(doc)
    print(f"\nwrote {opts.json_path}")
    if not args.smoke and not args.no_report and opts.json_path == suite.RESULTS_DIR / "latest.json":
        for written in report.write_results(doc):
            print(f"wrote {written}")
    if opts.chart:
        from benchmarks import chart

        png = opts.json_path.with_suffix(".png")
        why = chart.render(opts.json_path, png, log=lambda m: print(m, file=sys.stderr))
        print(why or f"wrote {png}")
    failed = bool(doc.get("failures")) or not doc.get("results", {}).get("ojs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
