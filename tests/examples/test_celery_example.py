"""examples/celery_app.py runs: real workers, Redis, the real API server as the store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.kubernetes
def test_celery_example_demo_on_kubernetes(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    proc = subprocess.run(
        [sys.executable, "examples/celery_app.py", "demo", "--payments", "10", "--lookups", "20"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={
            **os.environ,
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/10",
            "KONDUCTOR_STORE": "kubernetes",
            "KUBECONFIG": str(kube_crds.admin_kubeconfig),
            "KONDUCTOR_NAMESPACE": ns,
        },
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "10 payments charged" in out
    peak = re.search(r"at most (\d+) payment API calls at once \(limit 3\)", out)
    assert peak is not None, out
    assert 1 <= int(peak.group(1)) <= 3
    assert "3 reindexes of shop-1, at most 1 at once (singleton)" in out
    assert "all distinct: True" in out
    lookups = re.search(r"20 lookups in [\d.]+s, at most (\d+) started in any 1 s", out)
    assert lookups is not None, out
    assert 1 <= int(lookups.group(1)) <= 10  # burst + rate * 1 s
