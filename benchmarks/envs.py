"""Private environments for the peers: a venv per Python peer, an npm folder for BullMQ.

Everything lives under ``$OJS_BENCH_CACHE`` (default ``~/.cache/ojs-bench``), one folder per
peer, never in the project's own environment. A folder is reused while its ``.installed`` marker
names the same package spec; ``--reinstall`` starts it over. A peer that fails to install is
reported by the caller, never fatal: :func:`ensure` returns an :class:`Env` with ``error`` set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_TIMEOUT_S = 600.0
MARKER = ".installed"


def cache_root() -> Path:
    return Path(os.environ.get("OJS_BENCH_CACHE") or Path.home() / ".cache" / "ojs-bench")


@dataclass
class Env:
    """An installed (or failed) environment."""

    name: str
    kind: str  # "python" | "node" | "project"
    path: Path
    executable: str = ""  # the python, or node
    versions: dict[str, str] | None = None
    error: str = ""
    install_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    def bin(self, tool: str) -> str:
        """A console script of a Python env (dramatiq, celery, rq, arq, saq)."""
        return str(self.path / "bin" / tool)


def project_env() -> Env:
    """The harness's own interpreter: the project's venv, where ojs runs."""
    from importlib import metadata

    versions = {}
    for dist in ("ojs-runtime", "redis", "hiredis", "msgspec", "uvloop"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return Env("ojs", "project", Path(sys.prefix), sys.executable, versions)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")


def _read_marker(path: Path, spec: str) -> dict[str, str] | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if data.get("spec") != spec:
        return None
    return dict(data.get("versions") or {})


def _write_marker(path: Path, spec: str, versions: dict[str, str]) -> None:
    (path / MARKER).write_text(json.dumps({"spec": spec, "versions": versions, "installed_at": time.time()}))


def ensure_python(name: str, packages: list[str], dists: list[str], *, reinstall: bool = False,
                  log=lambda msg: None) -> Env:
    """A venv at <cache>/<name> with `packages` installed by pip; `dists` are reported with versions.

    The venv is made from the harness's own base interpreter (same Python version as ojs)."""
    path = cache_root() / name
    python = path / "bin" / "python"
    spec = " ".join(packages)
    env = Env(name, "python", path, str(python))
    if not reinstall and python.exists():
        versions = _read_marker(path, spec)
        if versions is not None:
            env.versions = versions
            return env
    started = time.monotonic()
    log(f"installing {name}: pip install {spec} into {path}")
    try:
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(path)])
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-input", *packages])
        env.versions = _python_versions(python, dists)
        _write_marker(path, spec, env.versions)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        env.error = f"install failed: {err}"
    env.install_s = time.monotonic() - started
    return env


def _python_versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = ("import json,sys\nfrom importlib import metadata as m\nout={}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d]=m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot read versions: {proc.stderr.strip()[-500:]}")
    return dict(json.loads(proc.stdout))


def ensure_node(name: str, packages: list[str], *, reinstall: bool = False, log=lambda msg: None) -> Env:
    """An npm folder at <cache>/<name> with `packages` in node_modules."""
    path = cache_root() / name
    spec = " ".join(packages)
    node = shutil.which("node") or ""
    env = Env(name, "node", path, node)
    if not node or not shutil.which("npm"):
        env.error = "node and npm are needed on PATH"
        return env
    if not reinstall and (path / "node_modules").is_dir():
        versions = _read_marker(path, spec)
        if versions is not None:
            env.versions = versions
            return env
    started = time.monotonic()
    log(f"installing {name}: npm install {spec} in {path}")
    try:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / "package.json").write_text(json.dumps({"name": f"ojs-bench-{name}", "private": True}))
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *packages], cwd=path)
        versions = {"node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()}
        for package in packages:
            bare = package.rsplit("@", 1)[0] if package.count("@") > (1 if package.startswith("@") else 0) else package
            meta = path / "node_modules" / bare / "package.json"
            if meta.exists():
                versions[bare] = json.loads(meta.read_text()).get("version", "?")
        for dep in ("ioredis",):
            meta = path / "node_modules" / dep / "package.json"
            if meta.exists():
                versions[dep] = json.loads(meta.read_text()).get("version", "?")
        env.versions = versions
        _write_marker(path, spec, versions)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        env.error = f"install failed: {err}"
    env.install_s = time.monotonic() - started
    return env
