"""The semaphore benchmark runs end to end (tiny sizes) and prints its whole table.

No timing is asserted: this only proves that ``benchmarks/semaphore.py`` still
runs against a real API server and reports every row for both sides.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.benchmarks import run_quick

pytestmark = pytest.mark.kubernetes

# --quick uses 2 clients x 3 tasks on 2 permits for the contended scenario.
CONTENDED = "6 waiters on 2 permits"
ROWS = [
    "uncontended acquire+release: API requests",
    "uncontended acquire+release: writes",
    "uncontended acquire+release: reads",
    "uncontended acquire+release: watches",
    "handoff latency p50 (ms)",
    "handoff latency p95 (ms)",
    "handoff latency max (ms)",
    "handoff: API requests per handoff",
    f"{CONTENDED}: API requests per grant",
    f"{CONTENDED}: writes per grant",
    f"{CONTENDED}: reads per grant",
    f"{CONTENDED}: watches per grant",
    f"{CONTENDED}: 409 conflicts per grant",
    f"{CONTENDED}: wall time (s)",
    f"{CONTENDED}: most holders at once",
]


def test_quick_benchmark_prints_every_row(kube_crds: Any) -> None:
    proc = run_quick("benchmarks/semaphore.py", kube_crds.admin_kubeconfig)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric "))
    assert "konductor" in lines[header]
    assert "baseline" in lines[header]
    assert "konductor/baseline" in lines[header]
    found = {}
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        metric = next((r for r in ROWS if line.startswith(r)), None)
        assert metric is not None, f"unexpected row: {line!r}"
        found[metric] = line[len(metric) :].split()
    assert list(found) == ROWS
    for metric, cells in found.items():
        konductor, baseline, ratio = cells[:3]
        # Both sides measured: numbers, not blanks.
        assert float(konductor) >= 0, (metric, cells)
        assert float(baseline) >= 0, (metric, cells)
        assert ratio in ("-", "n/a", "inf") or float(ratio) >= 0, (metric, cells)
    # Both semaphores are safe: never more holders than the 2 permits.
    konductor_peak, baseline_peak = found[f"{CONTENDED}: most holders at once"][:2]
    assert 1 <= int(konductor_peak) <= 2
    assert 1 <= int(baseline_peak) <= 2
    assert "QUICK sizes" in proc.stdout
