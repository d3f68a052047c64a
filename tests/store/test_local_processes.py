"""The local store under real contention: several OS processes on one SQLite file.

Nothing is shared between the processes but the database file, so the only
thing keeping them apart is the store's compare-and-swap transaction. The
witness is a Redis counter, independent of konductor and of SQLite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from konductor import Client
from konductor.store import SEMAPHORE, LocalStore

WORKER = Path(__file__).with_name("local_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def spawn(db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--db", str(db), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_three_processes_never_exceed_three_permits(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    key = f"konductor-test:{uuid.uuid4().hex}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    args = ["--name", "witnessed", "--permits", "3", "--tasks", "10", "--rounds", "7"]
    procs = [spawn(db, *args, "--key", key) for _ in range(3)]
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

        async def final() -> dict[str, object]:
            async with LocalStore(db) as store:
                return (await store.get(SEMAPHORE, "witnessed")).status

        assert asyncio.run(final()).get("inUse") == 0  # every permit was released
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r.delete(f"{key}:total", f"{key}:max", f"{key}:inside")
        r.close()


def test_a_killed_holders_permit_comes_back_within_its_ttl(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    ttl = 3.0
    proc = spawn(db, "--name", "crashy", "--permits", "1", "--ttl", str(ttl), "--hold-forever")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "HELD", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()

        async def waiter() -> float:
            store = LocalStore(db)
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
