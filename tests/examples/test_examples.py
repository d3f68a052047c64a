"""Every example is executed, so none rots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_store_counter_on_memory() -> None:
    out = run_example("examples/store_counter.py")
    assert "20 writers x 10 increments -> counter = 200" in out


@pytest.mark.kubernetes
def test_store_counter_on_kubernetes(kube_crds: Any) -> None:
    out = run_example(
        "examples/store_counter.py",
        "--kubeconfig",
        str(kube_crds.admin_kubeconfig),
        "--writers",
        "5",
        "--times",
        "4",
    )
    assert "5 writers x 4 increments -> counter = 20" in out
