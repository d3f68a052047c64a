"""The rate-limit cost benchmark runs end to end (--quick) and prints every row.

No timing is asserted: this only proves that ``benchmarks/ratelimit.py`` still
starts its worker processes against a real API server, reads the server's own
request counts for both limiters and reports the konductor/baseline ratios.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.support.benchmarks import run_quick

pytestmark = pytest.mark.kubernetes

ROWS = [("1", "konductor"), ("1", "baseline"), ("2", "konductor"), ("2", "baseline")]


def test_quick_ratelimit_benchmark_prints_every_row(kube_crds: Any) -> None:
    proc = run_quick("benchmarks/ratelimit.py", kube_crds.admin_kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("... "), proc.stderr[:200]  # progress on stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("processes "))
    rows = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    assert [tuple(r[:2]) for r in rows] == ROWS
    for cells in rows:
        assert len(cells) == 10, cells
        calls, requests, per_1000 = int(cells[3]), int(cells[5]), float(cells[6])
        assert calls > 0, cells  # every limiter let calls through
        assert requests > 0, cells  # counted by the server
        assert not math.isnan(per_1000), cells
        assert cells[9] == "0", cells  # no errors
    for k, b in zip(rows[0::2], rows[1::2], strict=True):
        # The baseline writes per call (a GET and a PUT at least); konductor only its
        # membership: that difference is what the benchmark exists to show.
        assert int(b[5]) >= 2 * int(b[3]), b
        assert int(k[5]) < int(k[3]), k
        assert int(k[8]) <= 50 + 50, k  # busiest second within burst + rate
    ratios = lines.index(next(line for line in lines if line.startswith("konductor / baseline")))
    header2 = next(i for i in range(ratios, len(lines)) if lines[i].startswith("processes "))
    pairs = [line.split() for line in lines[header2 + 2 : header2 + 4]]
    assert [p[0] for p in pairs] == ["1", "2"]
    assert all(0 < float(p[1]) < 1 for p in pairs), pairs
    assert "QUICK sizes" in proc.stdout
