"""Safety under real contention: several OS processes on a store they share.

Run on both stores that processes can share: the real API server and the
local SQLite store. The witness is a Redis counter outside konductor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from konductor import Client
from konductor.store import SEMAPHORE, KubernetesStore, LocalStore, Store
from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "support" / "semaphore_worker.py"


@dataclass
class Shared:
    """A store several processes can share: how workers reach it, and a client side."""

    worker_args: list[str]
    open: Callable[[], Store]

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *self.worker_args, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def status(self, name: str) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            async with self.open() as store:
                return (await store.get(SEMAPHORE, name)).status

        return asyncio.run(read())


@pytest.fixture(params=[pytest.param("kubernetes", marks=pytest.mark.kubernetes), "local"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Shared:
    if request.param == "local":
        db = tmp_path / "shared.db"
        return Shared(["--db", str(db)], lambda: LocalStore(db))
    env = request.getfixturevalue("kube_crds")
    ns = fresh_namespace(env)
    cfg = str(env.admin_kubeconfig)
    return Shared(
        ["--kubeconfig", cfg, "--namespace", ns], lambda: KubernetesStore(ns, kubeconfig=cfg)
    )


def test_three_processes_never_exceed_three_permits(shared: Shared) -> None:
    key = f"konductor-test:{uuid.uuid4().hex}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    args = ["--name", "witnessed", "--permits", "3", "--tasks", "10", "--rounds", "7"]
    procs = [shared.spawn(*args, "--key", key) for _ in range(3)]
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
        assert shared.status("witnessed").get("inUse") == 0  # every permit was released
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r.delete(f"{key}:total", f"{key}:max", f"{key}:inside")
        r.close()


def test_a_killed_holders_permit_comes_back_within_its_ttl(shared: Shared) -> None:
    ttl = 3.0
    proc = shared.spawn("--name", "crashy", "--permits", "1", "--ttl", str(ttl), "--hold-forever")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "HELD", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()

        async def waiter() -> float:
            store = shared.open()
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
