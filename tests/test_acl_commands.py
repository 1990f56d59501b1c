"""The ACL command list (runtime.broker.acl) is the one the code needs: every command the Lua
transitions call is on it and nothing it lists for them is unused, and the README shows an
operator the same list (tests/test_managed_redis.py runs a workload as a user granted only it)."""

from __future__ import annotations

import re
from pathlib import Path

from runtime.broker import acl

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "runtime" / "broker" / "scripts"
# rcall is the transitions' alias of redis.call (runtime/broker/scripts.py).
CALL = re.compile(r"""\b(?:rcall|redis\.p?call)\(\s*(['"])(\w+)\1""")
ANY_CALL = re.compile(r"""\b(?:rcall|redis\.p?call)\(""")


def script_commands() -> set[str]:
    found: set[str] = set()
    for path in SCRIPTS.glob("*.lua"):
        text = path.read_text()
        names = [m.group(2).lower() for m in CALL.finditer(text)]
        # A command named by a variable would escape this check: there is none, keep it so.
        assert len(names) == len(ANY_CALL.findall(text)), f"{path.name} calls Redis with a computed command name"
        found.update(names)
    return found


def test_the_acl_list_names_exactly_the_commands_of_the_scripts() -> None:
    assert script_commands() == set(acl.SCRIPT_COMMANDS)


def test_the_readme_lists_the_acl_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = " ".join(f"+{command}" for command in acl.COMMANDS)
    assert listed in readme, f"README's ACL line should grant exactly:\n{listed}"


def test_the_acl_rule_confines_the_user_to_the_namespace() -> None:
    rule = acl.acl_rule("{ojs}:", "ojs", "pw")
    assert rule.startswith("user ojs on >pw resetkeys ~{ojs}:* resetchannels &{ojs}:* -@all +")
    assert acl.key_pattern("a*b?[c]") == r"a\*b\?\[c\]*"
