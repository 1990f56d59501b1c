"""The README's fenced code blocks, and the rule that says which of them a test runs.

* ``text`` blocks are diagrams and sample output, never code.
* ``sh`` and ``python`` blocks are run, unless the line right before the fence is a marker with
  its reason, visible in the README's source: ``<!-- not run: installs a system service -->``.
* A ``python`` block whose first line names a file (``# myapp/handlers.py``) is that file: it is
  saved there and imported, since it is a module, not something to run.
* Any other language (or none) is an error: a new block must say how it is checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_LANGUAGES = ("sh", "python")
NEVER_CODE = ("text",)
_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
_FILE_LINE = re.compile(r"^#\s*([\w./-]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the marker's reason
    file: str | None  # the path a module block names

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def blocks(readme: Path) -> list[Block]:
    text = readme.read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        language, code = match.group(1), match.group(2)
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _NOT_RUN.match(before.strip())
        first = code.split("\n", 1)[0]
        named = _FILE_LINE.match(first) if language == "python" else None
        found.append(Block(line=line, language=language, code=code,
                           not_run=marker.group(1).strip() if marker else None,
                           file=named.group(1) if named else None))
    return found
