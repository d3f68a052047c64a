"""The CLI is presentation only: it reads and writes stored state through the core's API.

A second client of the stored JSON format (its own parsing, its own
compare-and-swap loops, its own watch loop) is what issue 17 removed; this
test keeps it from coming back. It reads the CLI's source, so it fails on
the line that brings it back, whatever the command.
"""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "konductor" / "cli"
#: Store methods that write or watch: the core's Hub and admin API call them.
STORE_CALLS = {"replace_status", "replace_spec", "create", "watch", "list"}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(CLI.glob("*.py"))]


def test_the_cli_imports_no_state_module_and_no_clock_formatting() -> None:
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                targets = [f"{node.module}.{n}" for n in names] + [node.module]
                for target in targets:
                    last = target.rsplit(".", 1)[-1]
                    if last.endswith("_state") or target.endswith("_clock.micro_time"):
                        found.append(f"{path.name}:{node.lineno} {target}")
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.name}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.endswith("_state")
                ]
    assert found == [], found


def test_the_cli_writes_and_watches_no_store_itself() -> None:
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in STORE_CALLS
                and "store" in ast.unparse(node.func.value)
            ):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}")
    assert found == [], found


def test_the_check_finds_what_it_looks_for() -> None:
    """The two checks above would see a state import or a store write if there were one."""
    tree = ast.parse(
        "from konductor._engine import _queue_state as q\n"
        "await store.replace_status(K, n, s, version=v)\n"
    )
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [a.name for a in imports[0].names] == ["_queue_state"]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls[0].func.attr in STORE_CALLS  # type: ignore[attr-defined]
