"""Tests of the peer-comparison harness. Not collected by ``make test`` (testpaths = tests);
run them with ``.venv/bin/python -m pytest benchmarks/test_peers_harness.py``.

The report tests use a made-up results document; ``test_smoke_run`` runs ``python -m benchmarks
run --smoke`` for real (ojs only, 500 jobs, ~20 s): a private Redis, ojs-run, the HTTP server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report, suite
from benchmarks.__main__ import _peers_arg, parse_args
from benchmarks.memory_row import key_pattern

REPO = Path(__file__).resolve().parent.parent


def make_doc() -> dict:
    def fig(*values: float, unit: str = "jobs/s") -> dict:
        return {**suite.aggregate(list(values)), "values": list(values), "unit": unit}

    results = {
        "ojs": {"w1_single": fig(3000, 3300, 3100), "w1_bulk": fig(50_000, 52_000, 51_000),
                "w2_drain": fig(9000, 9100, 8900), "w2_backlog": fig(8000, 8050, 8100), "w3_p50": fig(0.8, 0.9, 0.85, unit="ms"),
                "w3_p99": fig(2.0, 2.5, 2.2, unit="ms"), "w1_http_c16": fig(4000, 4100, 4200, unit="req/s")},
        "bullmq": {"w1_single": fig(1500, 1600, 1550), "w1_bulk": fig(20_000, 21_000, 22_000),
                   "w2_drain": fig(3000, 3100, 3200), "w3_p50": fig(2.0, 2.1, 2.2, unit="ms"),
                   "w3_p99": fig(5.0, 6.0, 7.0, unit="ms")},
        "arq": {"w1_single": fig(600, 650, 700)},
    }
    detail = {"jobs": 100, "jobs_per_s": 9000.0, "cpu_us_per_job": {"workers": 100.0, "redis": 50.0},
              "cpu_us_per_job_total": 150.0, "commands_per_job": 12.5, "evalsha_per_job": 0.3,
              "per_command": {"hset": 2.0, "evalsha": 0.3}, "other_load": 0.02}
    return {
        "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 300, "command": "python -m benchmarks run",
        "settings": {"jobs": 20_000, "reps": 3, "batch": 1000, "processes": 2, "concurrency": 10,
                     "latency_jobs": 500, "latency_budget_s": 30.0, "gap_ms": 10.0, "smoke": False},
        "machine": {"cpu_model": "Test CPU", "nproc": 2, "memory_gib": 24, "python": "3.11.7",
                    "platform": "Linux", "loadavg_at_start": [0.1, 0.1, 0.1], "loadavg_at_end": [1, 1, 1]},
        "redis": {"name": "redis", "version": "7.0.15", "executable": "/usr/bin/redis-server"},
        "figures": suite.FIGURES,
        "targets": suite.target_table(),
        "peers": {
            "ojs": {"installed": True, "versions": {"ojs-runtime": "0.1.0"}, "settings": {"workers": "ojs-run"}},
            "bullmq": {"installed": True, "versions": {"bullmq": "6.7.0"}, "settings": {}},
            "arq": {"installed": True, "versions": {"arq": "0.28.0"}, "settings": {}},
            "celery": {"installed": False, "error": "install failed: boom\nmore", "settings": {}},
        },
        "results": results,
        "ratios": suite.ratios(results),
        "details": {"ojs": {"w2_drain": [detail]}, "bullmq": {"w2_drain": [detail]}},
        "failures": {"arq": {"w2_drain": ["drain not finished in 300 s\nlog tail"]}},
    }


def test_aggregate_is_median_min_max() -> None:
    assert suite.aggregate([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_ratios_point_the_same_way_for_throughput_and_latency() -> None:
    doc = make_doc()
    assert doc["ratios"]["w2_drain"]["bullmq"] == pytest.approx(9000 / 3100, rel=1e-3)
    assert doc["ratios"]["w3_p50"]["bullmq"] == pytest.approx(2.1 / 0.85, rel=1e-3)  # > 1: ojs is faster
    assert "arq" not in doc["ratios"]["w2_drain"]


def test_percentile_interpolates() -> None:
    assert suite.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert suite.percentile([5.0], 0.99) == 5.0


def test_report_tables_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc()
    report.print_report(doc)
    out = capsys.readouterr().out
    assert "W2 drain, no-op jobs" in out and "2.90x" in out
    assert "celery: not installed: install failed: boom" in out
    assert "arq w2_drain: failed 1x: drain not finished" in out
    head, rows = report.figures_table(doc)
    assert head[2:] == ["ojs", "bullmq", "arq", "celery"]
    w1 = next(r for r in rows if r[0].startswith("W1 enqueue, one at a time"))
    assert w1[2] == "3,100 (3,000–3,300)" and w1[5] == "not installed"
    bulk = next(r for r in rows if r[0].startswith("W1 enqueue, batch API"))
    assert bulk[4] == "no batch API"

    readme = tmp_path / "README.md"
    readme.write_text(f"# Theirs\n\nkept\n\n{report.BEGIN}\nold\n{report.END}\n\ntail kept\n")
    written = report.write_results(doc, tmp_path / "RESULTS.md", readme)
    assert len(written) == 2
    text = readme.read_text()
    assert text.startswith("# Theirs\n\nkept\n") and text.endswith("tail kept\n") and "old" not in text
    md = (tmp_path / "RESULTS.md").read_text()
    assert "Test CPU, 2 cores" in md and "redis 7.0.15" in md and "Python 3.11.7" in md
    assert "| ojs | ojs-runtime 0.1.0 |" in md


def test_targets_are_checked() -> None:
    lines = "\n".join(report.target_lines(make_doc()))
    assert "2.90x bullmq (target >= 2.5x): met" in lines
    assert "batch API: 2.43x bullmq (target >= 1.6x): met" in lines
    # the p50 has two: at most BullMQ's, and at most 1 ms
    assert "p50: 2.47x bullmq (target >= 1.0x): met" in lines and "p50: 0.85 ms (target <= 1.0 ms): met" in lines
    assert "0.89x ojs W2 drain, no-op jobs (target >= 0.9x): NOT met" in lines
    assert "p99: 2.73x bullmq (target >= 2.0x): met" in lines
    # a file written before a figure had several targets still reads
    old = {**make_doc(), "targets": {"w1_bulk": {"op": ">=", "value": 60_000, "against": None}}}
    assert report.target_lines(old) == ["- W1 enqueue, batch API: 51,000 jobs/s (target >= 60,000 jobs/s): NOT met"]


def test_key_pattern_groups_keys_by_kind() -> None:
    assert key_pattern("{ojs}:job:01a233a2-56e0-7142-973f-c27009782c5a") == "{ojs}:job:*"
    assert key_pattern("bull:bench:123") == "bull:bench:*"
    assert key_pattern("{ojs}:queue:bench:available") == "{ojs}:queue:bench:available"
    assert key_pattern("{ojs}:stats:m:1796162340000") == "{ojs}:stats:m:*"


def test_cli_parsing() -> None:
    args = parse_args(_peers_arg(["run", "--peers", "none", "--jobs", "100"]))
    assert args.peers == ("ojs",) and args.jobs == 100
    with pytest.raises(SystemExit):
        parse_args(["run", "--peers", "sidekiq"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None and shutil.which("valkey-server") is None
                    and not os.environ.get("BENCH_SMOKE_ANYWAY"), reason="no redis-server on PATH")
def test_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--smoke", "--quiet", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    ojs = doc["results"]["ojs"]
    for figure in ("w1_single", "w1_bulk", "w1_http_single", "w1_http_bulk", "w1_http_c16"):
        assert ojs[figure]["median"] > 0
    if not doc["peers"]["ojs"]["skipped"]:  # the worker runtime is there: W2 and W3 ran too
        assert ojs["w2_drain"]["median"] > 0 and ojs["w2_backlog"]["median"] > 0
        assert 0 < ojs["w3_p50"]["median"] <= ojs["w3_p99"]["median"]
        assert ojs["mem_bytes_per_job"]["median"] > 0 and ojs["mem_worker_rss"]["median"] > 0
        (memory,) = doc["details"]["ojs"]["memory"]
        assert memory["breakdown"][0]["pattern"] == "{ojs}:job:*" and memory["jobs"] == 2_000
    assert doc["machine"]["nproc"] >= 1 and doc["redis"]["version"]
