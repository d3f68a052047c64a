"""A fleet on one semaphore: many OS processes, each its own client, on the real API server.

The correctness side of benchmarks/contention.py (which measures the speed):
12 processes, one task each, contend for 4 permits. A Redis counter outside
konductor is the witness. No timing is asserted here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from konductor.store import SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "support" / "fleet_worker.py"
PROCESSES = 12
PERMITS = 4
ROUNDS = 4
# Long against a handoff, so that all permits are in use at once whenever the
# fleet waits: with 50 ms holds konductor (main f2aa402) hands permits on so
# slowly under 12 waiting processes that the witness sometimes never sees 4
# holders (peak 3), which is issue 12's throughput problem, measured by
# benchmarks/contention.py, not a safety property to assert here.
HOLD = 0.5


@pytest.mark.parametrize("mixed", [False, True], ids=["patches", "patches-cas-priorities"])
def test_twelve_processes_share_four_permits_safely(kube_crds: Any, mixed: bool) -> None:
    """``mixed``: every other worker writes by compare-and-swap only (an old Role, or a
    fleet mid-upgrade) and the workers queue with priorities -1, 0 and 1: the guarded
    patches must stay sound against whole-status writes and a reordered queue."""
    ns = fresh_namespace(kube_crds)
    cfg = str(kube_crds.admin_kubeconfig)
    name = "fleet"
    key = f"konductor-test:{uuid.uuid4().hex}"

    async def status() -> dict[str, Any]:
        async with KubernetesStore(ns, kubeconfig=cfg) as store:
            return (await store.get(SEMAPHORE, name)).status

    async def create() -> None:
        async with KubernetesStore(ns, kubeconfig=cfg) as store:
            await store.create(SEMAPHORE, name, {"permits": PERMITS})

    asyncio.run(create())
    r = redis.Redis(host="127.0.0.1", port=6379)
    args = [
        *("--kubeconfig", cfg, "--namespace", ns, "--name", name),
        *("--permits", str(PERMITS), "--rounds", str(ROUNDS), "--hold", str(HOLD)),
        *("--key", key),
    ]

    def extra(i: int) -> list[str]:
        if not mixed:
            return []
        return [*(["--cas"] if i % 2 else []), "--priority", str(i % 3 - 1)]

    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args, *extra(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(PROCESSES)
    ]
    try:
        for p in procs:  # every worker connected before any starts: contention is real
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "READY", p.stderr.read() if p.stderr else ""
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert out.strip() == "DONE", (out, err)
        total = int(r.get(f"{key}:total") or 0)
        peak = int(r.get(f"{key}:max") or 0)
        assert total == PROCESSES * ROUNDS  # every acquisition completed
        assert peak <= PERMITS, f"witness saw {peak} holders inside at once"
        assert peak == PERMITS  # the contention was real
        assert int(r.get(f"{key}:inside") or 0) == 0
        left = asyncio.run(status())
        assert left.get("holders", []) == []  # nothing left in the object
        assert left.get("queue", []) == []
        assert left.get("inUse") == 0
        assert left.get("waiting") == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        r.delete(f"{key}:total", f"{key}:max", f"{key}:inside")
        r.close()
