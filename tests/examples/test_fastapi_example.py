"""examples/fastapi_app.py runs: 3 uvicorn replicas, on the local store and the real apiserver."""

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


def run_demo(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "examples/fastapi_app.py", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    out = proc.stdout
    assert "before the gate opens: migration ran: False" in out
    assert "schema_migrations has 1 row(s)" in out
    assert "all 3 passed barrier 'app-start' (arrived: [3])" in out
    assert re.search(r"SIGTERM to the leader: replica \d leads after \d+ ms \(token 1\)", out), out
    assert "tokens in order: True" in out
    assert "exactly one migration: True" in out
    return out


def test_fastapi_example_demo_on_the_local_store() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONDUCTOR_")}
    run_demo(env)


@pytest.mark.kubernetes
def test_fastapi_example_demo_on_kubernetes(kube_crds: Any) -> None:
    run_demo(
        {
            **os.environ,
            "KONDUCTOR_STORE": "kubernetes",
            "KUBECONFIG": str(kube_crds.admin_kubeconfig),
            "KONDUCTOR_NAMESPACE": fresh_namespace(kube_crds),
        }
    )
