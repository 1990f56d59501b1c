"""The deployment files agree with the code: metric names exist, stop timeouts cover the drain."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from runtime import metrics
from tests.fixtures.procs import REPO

DEPLOY = REPO / "deploy"
DRAIN_S = 25  # ojs-run's default --drain-timeout, also set in the manifests
SCRAPE_TIME_GAUGES = {"ojs_queue_depth", "ojs_queue_oldest_job_age_seconds"}


def exposed_names() -> set[str]:
    names = set(SCRAPE_TIME_GAUGES)
    for metric in metrics.ALL:
        base = metric._name
        kind = metric._type
        if kind == "counter":
            names.add(f"{base}_total")
        elif kind == "histogram":
            names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        else:
            names.add(base)
    return names


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bojs_[a-z_]+", text))


def test_ops_dashboard_and_autoscaler_use_only_exposed_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ojs-runtime.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    keda = (DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text()
    assert used_names(exprs) and used_names(exprs) <= exposed_names(), used_names(exprs) - exposed_names()
    assert used_names(keda) and used_names(keda) <= exposed_names(), used_names(keda) - exposed_names()


def test_ops_kubernetes_grace_period_covers_the_drain_and_probes_use_the_endpoints() -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "ojs-runtime.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["OJS_DRAIN_TIMEOUT"]) == DRAIN_S
    assert pod["terminationGracePeriodSeconds"] > DRAIN_S + 25
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["OJS_METRICS_PORT"]
    assert "requests" in container["resources"]


def test_ops_systemd_stop_timeout_covers_the_drain() -> None:
    unit = (REPO / "systemd" / "ojs-run.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))
    assert settings["Type"] == "notify" and settings["KillMode"] == "mixed"
    assert int(settings["TimeoutStopSec"]) > DRAIN_S + 20
    env_example = Path(REPO / "systemd" / "ojs.env.example").read_text()
    assert f"OJS_DRAIN_TIMEOUT={DRAIN_S}" in env_example
