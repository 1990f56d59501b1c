"""The README's "Testing your handlers" example is a test file that passes as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_examples import blocks

pytestmark = pytest.mark.slow  # a child pytest run

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Testing your handlers"


def test_the_readme_testing_example_passes(tmp_path: Path, ojs_redis_url: str) -> None:
    readme = ROOT / "README.md"
    start = readme.read_text().index(SECTION)
    first_line = readme.read_text().count("\n", 0, start) + 1
    (example,) = [b for b in blocks(readme) if b.line > first_line and b.file == "test_welcome.py"][:1]
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / example.file).write_text(example.code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "runtime.testing.pytest_plugin", "-p", "no:cacheprovider",
         "--ojs-redis-url", ojs_redis_url, example.file],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    tests = example.code.count("\ndef test_")
    assert done.returncode == 0 and f"{tests} passed" in done.stdout, done.stdout + done.stderr
