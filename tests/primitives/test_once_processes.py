"""Once under real contention: several OS processes on the real API server."""

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

from konductor.store import ONCE, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes
WORKER = Path(__file__).with_name("once_worker.py")
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
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def ready(proc: subprocess.Popen[str]) -> str:
    """Wait for the worker's READY line; its identity."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"worker did not start: {line!r} {proc.communicate()[1]}")
    return line.split()[1]


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("GO\n")
    proc.stdin.flush()


async def read_status(env: Any, ns: str, name: str) -> dict[str, Any]:
    async with KubernetesStore(ns, kubeconfig=env.admin_kubeconfig) as store:
        return (await store.get(ONCE, name)).status


def test_three_processes_run_each_once_exactly_once(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    key = f"konductor-test:{uuid.uuid4().hex}"
    names = 6
    r = redis.Redis(host="127.0.0.1", port=6379)
    procs = [
        spawn(
            kube_crds,
            ns,
            "--names",
            str(names),
            "--tasks",
            "3",
            "--work",
            "1.0",
            "--key",
            key,
        )
        for _ in range(3)
    ]
    try:
        identities = [ready(p) for p in procs]
        for p in procs:
            go(p)  # all three start calling at the same moment
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            assert "DONE" in out
            assert "EARLY" not in out, out  # no caller returned before the run completed
            outs.append(out)
        runs = [line.split()[1] for out in outs for line in out.splitlines() if line[:4] == "RAN "]
        assert sorted(runs) == sorted(f"init-{i}" for i in range(names))  # one runner each
        for i in range(names):
            k = f"{key}:init-{i}"
            assert int(r.get(f"{k}:starts") or 0) == 1  # the witness: one execution
            assert int(r.get(f"{k}:done") or 0) == 1
            # Real contention: callers in at least two processes called before it ended.
            assert r.scard(f"{k}:early") >= 2
            status = asyncio.run(read_status(kube_crds, ns, f"init-{i}"))
            assert status["state"] == "Done"
            assert status["attempt"] == 1
            assert status["runner"] in identities
        total_waited = sum(int(out.split("waited=")[1].split()[0]) for out in outs)
        assert total_waited == 3 * 3 * names - names
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r.delete(*(r.keys(f"{key}:*") or ["none"]))
        r.close()


def test_a_killed_runner_is_taken_over_by_another_process_after_its_ttl(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    key = f"konductor-test:{uuid.uuid4().hex}"
    ttl = 3.0
    r = redis.Redis(host="127.0.0.1", port=6379)
    common = ["--prefix", "crashy", "--tasks", "1", "--work", "0.2", "--ttl", str(ttl)]
    runner = spawn(kube_crds, ns, *common, "--key", key, "--hang")
    rival = None
    try:
        ready(runner)
        go(runner)
        assert runner.stdout is not None
        line = runner.stdout.readline()
        assert line.strip() == "STARTED", runner.communicate()[1]
        rival = spawn(kube_crds, ns, *common, "--key", key)
        rival_identity = ready(rival)
        go(rival)  # it finds the run in progress and waits
        time.sleep(1.5)  # the dead runner has renewed meanwhile: the rival saw a live claim
        status = asyncio.run(read_status(kube_crds, ns, "crashy-0"))
        assert status["state"] == "Running"
        assert status["run"]["renewals"] >= 1
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        killed_at = time.monotonic()
        out, err = rival.communicate(timeout=120)
        assert rival.returncode == 0, err
        ran = [line.split() for line in out.splitlines() if line.startswith("RAN ")]
        assert len(ran) == 1, out
        called, fn_started = float(ran[0][2]), float(ran[0][3])
        # Not before a full TTL as the rival observed it (it saw renewals until the
        # kill), and promptly after (the margin only absorbs slow machines).
        assert fn_started - called >= ttl
        assert fn_started - killed_at < ttl + 10
        k = f"{key}:crashy-0"
        assert int(r.get(f"{k}:starts") or 0) == 2  # the killed run and the takeover
        assert int(r.get(f"{k}:done") or 0) == 1
        status = asyncio.run(read_status(kube_crds, ns, "crashy-0"))
        assert status["state"] == "Done"
        assert status["attempt"] == 2
        assert status["runner"] == rival_identity
    finally:
        for p in (runner, rival):
            if p is not None and p.poll() is None:
                p.kill()
        r.delete(*(r.keys(f"{key}:*") or ["none"]))
        r.close()
