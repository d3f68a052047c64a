"""examples/sqlalchemy_app.py runs, on the memory store and on the real API server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "examples/sqlalchemy_app.py", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def check(out: str, pods: int, cap: int) -> None:
    assert out.count("ran ") == pods, out
    match = re.search(r"peak (\d+) connections \(<= (\d+)\)", out)
    assert match, out
    assert int(match.group(1)) <= cap
    assert int(match.group(2)) == cap


def test_sqlalchemy_example_on_memory() -> None:
    check(run(), pods=3, cap=6)


@pytest.mark.kubernetes
def test_sqlalchemy_example_on_kubernetes(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    out = run("--kubeconfig", str(kube_crds.admin_kubeconfig), "--namespace", ns, "--queries", "5")
    check(out, pods=3, cap=6)
