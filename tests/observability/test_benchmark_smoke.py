"""benchmarks/observability.py still runs (no timing is asserted: speed is measured there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_observability_benchmark_runs_every_mode() -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/observability.py", "--rounds", "1", "--grants", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    modes = [line.split()[0] for line in out.splitlines()[1:]]
    assert modes == ["none", "metrics", "tracing", "both"], out
