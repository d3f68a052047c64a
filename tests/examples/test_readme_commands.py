"""The README's main-job command works exactly as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_command(heading: str) -> str:
    """The indented command under the README paragraph that starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    match = re.search(r"\n\n    (\S[^\n]*)\n", section)
    assert match, f"no command under {heading!r}"
    return match.group(1).strip()


def test_readme_names_the_two_commands() -> None:
    assert readme_command("**Main job on the embedded store.**") == "scripts/demo"
    assert readme_command("**The whole test suite**") == "scripts/test"


def test_main_job_command_runs_as_written() -> None:
    command = readme_command("**Main job on the embedded store.**")
    proc = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "migrations ran 1 time(s)" in out
    assert "at most 2 job(s) at once" in out
    assert "at most 1 leader(s) at any moment" in out
    assert out.count("is the LEADER now") == 4
    assert out.count("barrier open") == 4
