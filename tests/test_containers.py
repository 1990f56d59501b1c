"""The container files, checked without a container engine (none runs where the tests run): the
Dockerfile's stages, user, entrypoint, health check and the files it copies; compose.yaml and the
Kubernetes manifest against the Dockerfile and the README's "Containers" section."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.broker_process import free_port, serving
from tests.fixtures.procs import REPO

yaml = pytest.importorskip("yaml")


class Stage:
    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: comments dropped, continuations joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            found = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.I)
            assert found, f"every stage is named: FROM {rest}"
            stages.append(Stage(found.group(1), found.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)  # exec form is a JSON array; shell form would not parse
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return dockerfile_stages((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_dockerfile_builds_a_wheel_then_installs_it_on_a_slim_python(dockerfile: Any) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2, "multi-stage: the build tools stay out of the image"
    build, final = stages[0], stages[-1]
    for stage in stages:
        base = stage.base.replace("${PYTHON_VERSION}", args.get("PYTHON_VERSION", ""))
        assert re.fullmatch(r"python:3\.1[1-9]+-slim", base), base
    assert any("pip wheel" in run for run in build.all("RUN"))
    copied_from_build = [c for c in final.all("COPY") if c.startswith(f"--from={build.name} ")]
    assert copied_from_build, "the image gets the wheels from the build stage"
    wheel_dir = copied_from_build[0].split()[-1]
    assert any(f"--find-links {wheel_dir}" in run and "--no-index" in run for run in final.all("RUN"))
    # and no Redis inside: neither a server package nor the embedded extra
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"apt-get install[^\n]*redis|valkey|\[embedded", text)


def test_dockerfile_copies_only_files_the_repository_has(dockerfile: Any) -> None:
    _args, stages = dockerfile
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            parts = [p for p in copy.split() if not p.startswith("--")]
            if copy.startswith("--from="):
                continue
            sources.extend(parts[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not [s for s in sources if s.rstrip("/") in ignored]
    # everything the wheel is built from (pyproject's packages and readme) is copied
    assert {"pyproject.toml", "README.md", "runtime", "handlers_example"} <= {s.rstrip("/") for s in sources}


def test_dockerfile_runs_ojs_run_as_pid_1_as_a_non_root_user_with_a_health_check(dockerfile: Any) -> None:
    _args, stages = dockerfile
    final = stages[-1]
    user = final.last("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) >= 1000
    assert exec_form(final.last("ENTRYPOINT")) == ["ojs-run"]
    assert exec_form(final.last("CMD")) == ["handlers_example"]
    health = final.last("HEALTHCHECK")
    assert exec_form(health.split(" CMD ", 1)[1])[0] == "python", "exec form: no shell (nor curl) in the image"
    assert "/health" in health
    env = " ".join(final.all("ENV"))
    port = re.search(r"OJS_HTTP=0\.0\.0\.0:(\d+)", env)
    assert port and final.last("EXPOSE") == port.group(1)


def test_the_health_check_command_passes_against_a_serving_endpoint_and_fails_without_one(
        dockerfile: Any, redis_url: str, tmp_path: Path) -> None:
    _args, stages = dockerfile
    command = exec_form(stages[-1].last("HEALTHCHECK").split(" CMD ", 1)[1])
    command[0] = sys.executable  # the image's `python`
    with serving(redis_url, tmp_path) as server:
        serving_env = {**os.environ, "OJS_HTTP": f"0.0.0.0:{server.port}"}
        assert subprocess.run(command, env=serving_env, capture_output=True).returncode == 0
    nobody = {**os.environ, "OJS_HTTP": f"0.0.0.0:{free_port()}"}
    assert subprocess.run(command, env=nobody, capture_output=True).returncode != 0


def test_compose_runs_redis_with_aof_on_a_named_volume_and_the_example(compose: dict[str, Any], dockerfile: Any) -> None:
    services = compose["services"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    volume, _, mount = redis["volumes"][0].partition(":")
    assert mount == "/data" and volume in compose["volumes"]
    ojs = services["ojs"]
    assert ojs["build"] == "." and ojs["command"] == ["handlers_example"]
    assert ojs["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert ojs["depends_on"]["redis"]["condition"] == "service_healthy"
    published = [str(p).rsplit(":", 1) for p in ojs["ports"]]
    _args, stages = dockerfile
    assert [container for _host, container in published] == [stages[-1].last("EXPOSE")]
    # the grace period covers the drain (as the systemd unit and the manifest do)
    assert int(ojs["stop_grace_period"].rstrip("s")) > int(ojs["environment"]["OJS_DRAIN_TIMEOUT"]) + 20
    # traces: Jaeger in its own profile, the endpoint off unless set
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"] and "4318" in [str(p) for p in jaeger["expose"]]
    assert ojs["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"


def test_readme_names_the_ports_variables_and_probes_of_the_container_files(compose: dict[str, Any], dockerfile: Any) -> None:
    section = readme_section("Containers")
    ojs = compose["services"]["ojs"]
    for name in ojs["environment"]:
        assert f"`{name}`" in section, f"README Containers does not name {name}"
    for port in ojs["ports"]:
        assert str(port) in section, f"README Containers does not name the port {port}"
    assert "/health" in section and "HEALTHCHECK" in section
    assert "not exercised by CI" in section
    assert "docker compose --profile tracing up" in section
    traces = readme_section("Observability: traces")
    assert "http://jaeger:4318" in traces
    assert "http://jaeger:4318" in (REPO / "compose.yaml").read_text()


def test_kubernetes_manifest_runs_the_image_as_its_user(dockerfile: Any) -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "ojs-runtime.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _args, stages = dockerfile
    final = stages[-1]
    assert str(pod["securityContext"]["runAsUser"]) == final.last("USER").split(":")[0]
    assert container["command"][0] == exec_form(final.last("ENTRYPOINT"))[0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"] in " ".join(final.all("ENV"))
    manifest = (REPO / "deploy" / "kubernetes" / "ojs-runtime.yaml").read_text()
    assert "Dockerfile" in manifest and 'README "Containers"' in manifest


def test_the_dockerfile_parser_rejects_shell_form_and_unnamed_stages() -> None:
    with pytest.raises(AssertionError):
        dockerfile_stages("FROM python:3.12-slim\nRUN true\n")
    with pytest.raises(json.JSONDecodeError):
        exec_form("ojs-run handlers_example")
    _args, (stage,) = dockerfile_stages("FROM python:3.12-slim AS x\nRUN a \\\n  b\n# c\nUSER 1\n")
    assert stage.instructions == [("RUN", "a    b"), ("USER", "1")]
