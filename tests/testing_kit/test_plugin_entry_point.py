"""The pytest plugin reaches a user's tests through the pytest11 entry point of an installed
ojs-runtime, with no conftest; and a conftest that lists it as well does not load it twice."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # child pytest runs

ROOT = Path(__file__).resolve().parents[2]
USER_TEST = '''
import asyncio
from runtime import Client

def test_the_fixture_is_there(ojs_fake):
    async def go():
        async with Client() as client:
            await client.enqueue("user.job", ["x"])
    asyncio.run(go())
    ojs_fake.assert_enqueued("user.job", args=["x"])
'''


def installed_metadata(site: Path) -> None:
    """What `pip install` writes for the entry points, from this checkout's pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dist = site / f"ojs_runtime-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ojs-runtime\nVersion: {project['version']}\n")
    lines = ["[pytest11]", *(f"{name} = {target}" for name, target in project["entry-points"]["pytest11"].items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def run_user_project(tmp_path: Path, conftest: str | None) -> subprocess.CompletedProcess[str]:
    site, project = tmp_path / "site", tmp_path / "project"
    installed_metadata(site)
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_user.py").write_text(USER_TEST)
    if conftest is not None:
        (project / "conftest.py").write_text(conftest)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_package_gives_the_fixtures_without_a_conftest(tmp_path: Path) -> None:
    done = run_user_project(tmp_path, conftest=None)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_a_conftest_listing_the_plugin_too_loads_it_once(tmp_path: Path) -> None:
    done = run_user_project(tmp_path, conftest='pytest_plugins = ["runtime.testing.pytest_plugin"]\n')
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
