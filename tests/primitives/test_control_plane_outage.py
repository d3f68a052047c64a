"""Restarts of etcd and kube-apiserver in the middle of multi-process contention never over-admit.

Three OS processes x three tasks contend for a permits=2 semaphore (ttl 4 s) on a
private API server, while the test kills (SIGKILL) kube-apiserver or etcd for
10 s at random moments, ten times, with holders inside their bodies and waiters
queued. The witness is a Redis counter outside konductor: it must never see
more holders inside than permits. After the last outage every process must
make progress again, and once they stop nothing may be left behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from konductor import Client
from konductor.manifests import install_crds
from konductor.store import SEMAPHORE, KubernetesStore
from konductor.testing.apiserver import Component, LocalApiServer

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "support" / "outage_worker.py"
PERMITS, TTL, PROCESSES, TASKS = 2, 4.0, 3, 3
OUTAGE = 10.0
OUTAGES: list[Component] = ["kube-apiserver", "etcd"] * 5


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_control_plane_restarts_never_over_admit(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    r = redis.Redis(host="127.0.0.1", port=6379)
    key = f"konductor-test:outage:{uuid.uuid4().hex}"

    def count(suffix: str) -> int:
        return int(r.get(f"{key}:{suffix}") or 0)

    with LocalApiServer() as env:
        cfg = str(env.admin_kubeconfig)

        async def install() -> None:
            async with KubernetesStore(kubeconfig=cfg) as store:
                await install_crds(store)

        asyncio.run(install())
        procs = [
            subprocess.Popen(
                [
                    sys.executable, str(WORKER),
                    "--kubeconfig", cfg, "--namespace", "default", "--name", "outage",
                    "--permits", str(PERMITS), "--tasks", str(TASKS), "--ttl", str(TTL),
                    "--key", key, "--proc", str(i),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for i in range(PROCESSES)
        ]  # fmt: skip
        try:
            _wait_for(lambda: count("total") >= 10, 60, "contention to start")
            for component in OUTAGES:
                # Contention is live again (after the previous outage, the grants lost
                # in it must first expire), then a random moment later, with holders
                # inside their bodies and waiters queued, the outage.
                total = count("total")
                _wait_for(
                    lambda t=total: count("total") > t + 2 and count("inside") > 0,
                    90,
                    "grants to flow again",
                )
                time.sleep(rng.uniform(0.0, 2.0))
                env.kill(component)
                time.sleep(OUTAGE)
                env.revive(component)
                print(f"{component} restarted; witness peak so far {count('max')}")
            # Every process recovers: each is granted again after the last outage.
            after = {i: count(f"proc:{i}") for i in range(PROCESSES)}
            _wait_for(
                lambda: all(count(f"proc:{i}") > after[i] for i in range(PROCESSES)),
                90,
                "every process to be granted again after the last outage",
            )
            r.set(f"{key}:stop", 1)
            for p in procs:
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err[-3000:]
                assert "DONE" in out
            print(
                f"grants {count('total')}, lost {count('lost')}, errors {count('errors')}, "
                f"peak {count('max')}"
            )
            assert count("max") <= PERMITS, f"witness saw {count('max')} holders at once"
            assert count("max") == PERMITS  # the contention was real
            assert count("inside") == 0
            assert count("lost") > 0  # the outages really cut holders off

            async def left_behind() -> dict[str, Any]:
                # Stale entries are purged by the next write of an observer that has
                # seen them unchanged for a full TTL: watch for one, then write.
                async with KubernetesStore(kubeconfig=cfg) as store, Client(store) as client:
                    first = await client.try_acquire_semaphore("outage", permits=PERMITS)
                    if first is not None:
                        await first.release()
                    await asyncio.sleep(TTL + 1)
                    again = await client.acquire_semaphore("outage", permits=PERMITS, timeout=30)
                    await again.release()
                    return (await store.get(SEMAPHORE, "outage")).status

            status = asyncio.run(left_behind())
            assert status["holders"] == []
            assert status["queue"] == []
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            r.delete(*(r.keys(f"{key}:*") or [f"{key}:none"]))
            r.close()
