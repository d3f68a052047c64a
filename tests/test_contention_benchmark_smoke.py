"""The multi-process contention benchmark runs end to end (--quick) and prints every row.

No timing is asserted: this only proves that ``benchmarks/contention.py`` still
starts its worker processes against a real API server, reads the server's own
request counts and reports every (processes, hold, semaphore) row, with the
konductor/baseline ratios.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.support.benchmarks import run_quick

pytestmark = pytest.mark.kubernetes

# --quick: 1 and 4 processes, 50 ms hold, 3 s windows, permits 4.
ROWS = [("1", "50", "konductor"), ("1", "50", "baseline"), ("4", "50", "konductor")]
ROWS.append(("4", "50", "baseline"))
COLUMNS = [
    "processes",
    "hold ms",
    "semaphore",
    "grants/s",
    "ideal",
    "requests/grant",
    "conflicts/grant",
    "watches/grant",
    "wait p50 ms",
    "wait p95 ms",
    "peak holders",
    "served",
    "timeouts",
    "errors",
    "machine CPU",
    "own CPU",
]


def test_quick_contention_benchmark_prints_every_row(kube_crds: Any) -> None:
    proc = run_quick("benchmarks/contention.py", kube_crds.admin_kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("... "), proc.stderr[:200]  # progress on stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("processes "))
    for column in COLUMNS:
        assert column in lines[header], column
    rows = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    assert [tuple(r[:3]) for r in rows] == ROWS
    for cells in rows:
        assert len(cells) == len(COLUMNS), cells
        grants_per_s, ideal, per_grant = float(cells[3]), float(cells[4]), float(cells[5])
        assert grants_per_s > 0, cells  # something was granted in every window
        assert ideal == min(int(cells[0]), 4) / 0.05, cells
        # Counted by the server: every grant costs at least its acquire and release.
        assert not math.isnan(per_grant), cells
        assert per_grant >= 2, cells
        assert 1 <= int(cells[10]) <= min(int(cells[0]), 4), cells  # peak holders, safe
        served, processes = cells[11].split("/")
        assert 1 <= int(served) <= int(processes) == int(cells[0]), cells
        assert cells[13] == "0", cells  # no errors
    ratios = lines.index(next(line for line in lines if line.startswith("konductor / baseline")))
    header2 = next(i for i in range(ratios, len(lines)) if lines[i].startswith("processes "))
    pairs = [line.split() for line in lines[header2 + 2 : header2 + 4]]
    assert [p[:2] for p in pairs] == [["1", "50"], ["4", "50"]]
    assert all(float(p[2]) > 0 and float(p[3]) > 0 for p in pairs), pairs
    assert "QUICK sizes" in proc.stdout
    assert "kube-apiserver" in proc.stdout or "cluster of" in proc.stdout
