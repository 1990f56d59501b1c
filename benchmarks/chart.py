"""The bar chart of a comparison run: ``python benchmarks/chart.py RESULTS.json OUT.png``.

Standalone on purpose (json + matplotlib only): the harness runs it with whichever interpreter
has matplotlib, its own or a cache venv (see :func:`render`), since matplotlib is an optional
benchmark dependency, never one of the project's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COLORS = {"ojs": "#d62728", "bullmq": "#1f77b4", "dramatiq": "#2ca02c", "arq": "#9467bd", "saq": "#8c564b",
          "celery": "#e377c2", "rq": "#7f7f7f"}


def draw(doc: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["results"]
    names = [n for n in doc.get("peers", results) if n in results]
    panels = [
        ("Enqueue, one at a time (W1)", ["w1_single"], "jobs/s", False),
        ("Enqueue, batch API (W1)", ["w1_bulk"], "jobs/s", False),
        ("Drain, 2 processes (W2)", ["w2_drain"], "jobs/s", False),
        ("Enqueue-to-start latency (W3)", ["w3_p50", "w3_p99"], "ms (log)", True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, figures, unit, log) in zip(axes.flat, panels, strict=True):
        width = 0.8 / len(figures)
        shown = [n for n in names if any(f in results[n] for f in figures)]
        for k, figure in enumerate(figures):
            xs, meds, lows, highs, colors = [], [], [], [], []
            for i, name in enumerate(shown):
                fig_data = results[name].get(figure)
                if not fig_data:
                    continue
                xs.append(i + (k - (len(figures) - 1) / 2) * width)
                meds.append(fig_data["median"])
                lows.append(fig_data["median"] - fig_data["min"])
                highs.append(fig_data["max"] - fig_data["median"])
                colors.append(COLORS.get(name, "#333333"))
            bars = ax.bar(xs, meds, width=width * 0.95, color=colors, yerr=[lows, highs], capsize=3,
                          alpha=1.0 if k == 0 else 0.55, edgecolor="black", linewidth=0.4)
            for bar, value in zip(bars, meds, strict=True):
                label = f"{value:.2f}" if unit.startswith("ms") and value < 10 else f"{value:,.0f}"
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(shown)))
        ax.set_xlim(-0.6, max(len(shown), 4) - 0.4)  # a lone bar stays bar-sized
        ax.set_xticklabels(shown)
        ax.set_title(title + ("  (solid p50, light p99)" if len(figures) > 1 else ""), fontsize=10)
        ax.set_ylabel(unit)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if not shown:
            ax.text(0.5, 0.5, "no figures", ha="center", va="center", transform=ax.transAxes)
    m, r, s = doc.get("machine", {}), doc.get("redis", {}), doc.get("settings", {})
    worst = max((run.get("other_load") or 0.0 for steps in doc.get("details", {}).values()
                 for runs in steps.values() for run in runs), default=0.0)
    warning = (f"\nWARNING: other processes used up to {worst:.2f} cores meanwhile: figures low and noisy"
               if worst > 0.15 else "")
    fig.suptitle(f"ojs vs peers: N={s.get('jobs'):,}, {s.get('reps')} rep(s), median with min-max bars\n"
                 f"{m.get('cpu_model')}, {m.get('nproc')} cores, Python {m.get('python')}, "
                 f"{r.get('name')} {r.get('version')}, {doc.get('started_at')}{warning}", fontsize=10,
                 color="black")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render(json_path: Path, png_path: Path, log=print) -> str:
    """Draw with this interpreter if it has matplotlib, else with a cache venv that gets it.
    Returns '' or why there is no chart."""
    try:
        import matplotlib  # noqa: F401

        python = sys.executable
    except ImportError:
        from benchmarks import envs

        env = envs.ensure_python("_chart", ["matplotlib"], ["matplotlib"], log=log)
        if not env.ok:
            return f"no chart: matplotlib could not be installed ({env.error.splitlines()[0]})"
        python = env.executable
    proc = subprocess.run([python, str(Path(__file__).resolve()), str(json_path), str(png_path)],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND")})
    if proc.returncode != 0:
        return f"no chart: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return ""


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py RESULTS.json OUT.png")
    draw(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
