"""`mypy --strict` checks a task handle's enqueue arguments against its handler's signature (ctx
excluded) and types its result: it accepts tests/typed_example/tasks.py and rejects each wrong
use below, on the line where it is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "typed_example" / "tasks.py"

# Each wrong use, and the mypy error code it must get.
WRONG = {
    "await send_email.enqueue(1)": "arg-type",
    "await send_email.enqueue()": "call-arg",
    "await send_email.enqueue('a@example.com', 'hi', 'extra')": "call-arg",
    "await send_email.enqueue(too='a@example.com')": "call-arg",
    "await send_email.options(priority=1).enqueue(2)": "arg-type",
    "add.enqueue_sync('1', 2)": "arg-type",
    "n: int = await (await send_email.enqueue('a@example.com')).result()": "assignment",
    "s: str = add.enqueue_sync(1, 2).result()": "assignment",
}


@pytest.mark.slow
def test_mypy_accepts_the_typed_example_and_rejects_wrong_arguments(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    wrong = tmp_path / "wrong_uses.py"
    lines = ["from tests.typed_example.tasks import add, send_email", "", "", "async def uses() -> None:"]
    first = len(lines) + 1
    lines += [f"    {use}" for use in WRONG]
    wrong.write_text("\n".join(lines) + "\n")
    # Then
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "--show-error-codes", "--no-error-summary",
         str(EXAMPLE), str(wrong)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert "tasks.py" not in output, output  # the correct uses pass
    found: dict[int, set[str]] = {}
    for line_no, code in re.findall(r"wrong_uses\.py:(\d+): error: .*\[([a-z-]+)\]", output):
        found.setdefault(int(line_no), set()).add(code)
    expected = {first + i: code for i, code in enumerate(WRONG.values())}
    missing = {use: code for (line_no, code), use in zip(expected.items(), WRONG, strict=True)
               if code not in found.get(line_no, set())}
    assert not missing, f"mypy accepted (or misjudged) these:\n{missing}\n{output}"
    assert set(found) == set(expected), output
