"""Running a benchmark's ``--quick`` smoke run from a test, the way a contributor would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT --quick --kubeconfig KUBECONFIG`` from the repository root."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return subprocess.run(
        [sys.executable, script, "--quick", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])},
    )
