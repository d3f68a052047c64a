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
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def check(out: str, pods: int, cap: int, shares: list[int]) -> None:
    assert out.count("ran ") == pods, out
    assert re.findall(r"held (\d+)", out)[0] == str(min(cap, 4)), out  # the first pod: all
    match = re.search(r"fair shares \[([\d, ]+)\].* peak (\d+) connections \(<= (\d+)\)", out)
    assert match, out
    assert [int(x) for x in match.group(1).split(",")] == shares
    assert int(match.group(2)) == cap  # busy pods at their fair shares: all of the cap
    assert int(match.group(3)) == cap


def test_sqlalchemy_example_on_memory() -> None:
    check(run(), pods=3, cap=6, shares=[2, 2, 2])


@pytest.mark.kubernetes
def test_sqlalchemy_example_on_kubernetes(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    out = run(
        "--kubeconfig",
        str(kube_crds.admin_kubeconfig),
        "--namespace",
        ns,
        "--pods",
        "2",
        "--verbose",
        "--timeout",
        "20",
    )
    check(out, pods=2, cap=6, shares=[3, 3])
