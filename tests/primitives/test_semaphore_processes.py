"""Safety under real contention: several OS processes on the real API server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from konductor import Client
from konductor.store import SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes
WORKER = Path(__file__).with_name("semaphore_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def spawn(env: Any, ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--kubeconfig",
            str(env.admin_kubeconfig),
            "--namespace",
            ns,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_three_processes_never_exceed_three_permits(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    key = f"konductor-test:{uuid.uuid4().hex}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    procs = [
        spawn(
            kube_crds,
            ns,
            "--name",
            "witnessed",
            "--permits",
            "3",
            "--tasks",
            "10",
            "--rounds",
            "7",
            "--key",
            key,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            assert "DONE" in out
        total = int(r.get(f"{key}:total") or 0)
        peak = int(r.get(f"{key}:max") or 0)
        assert total == 3 * 10 * 7  # every acquisition completed (210)
        assert peak <= 3, f"witness saw {peak} holders inside at once"
        assert peak == 3  # the contention was real
        assert int(r.get(f"{key}:inside") or 0) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r.delete(f"{key}:total", f"{key}:max", f"{key}:inside")
        r.close()


def test_a_killed_holders_permit_comes_back_within_its_ttl(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    ttl = 3.0
    proc = spawn(
        kube_crds, ns, "--name", "crashy", "--permits", "1", "--ttl", str(ttl), "--hold-forever"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "HELD", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()

        async def waiter() -> float:
            store = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
            async with Client(store) as client:
                obj = await store.get(SEMAPHORE, "crashy")
                assert obj.status["inUse"] == 1  # the dead process still holds it
                async with client.semaphore("crashy", ttl=ttl, timeout=60):
                    return time.monotonic() - killed_at

        waited = asyncio.run(waiter())
        assert waited >= ttl * 0.9  # not before a full TTL as the observer saw it
        assert waited < ttl + 10  # and promptly after (the margin only absorbs slow machines)
    finally:
        if proc.poll() is None:
            proc.kill()
