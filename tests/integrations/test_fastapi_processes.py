"""konductor_lifespan across real uvicorn processes, with the real kube-apiserver as store.

Each replica is ``python -m uvicorn tests.integrations.fastapi_app:app`` on a
loopback port. The test reads the replicas' own view over HTTP
(``/konductor``) and, as a witness outside konductor, a file the app appends
to: one line per migration start/end and per start, tick and stop of the
leader coroutine (``O_APPEND`` writes, so the file's order is the order the
events happened in). The test appends a line when it SIGKILLs a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parents[2]
TTL = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Replica:
    def __init__(self, env: dict[str, str], logs: Path, index: int) -> None:
        self.port = free_port()
        self.index = index
        self.log = logs / f"replica-{index}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.integrations.fastapi_app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            )

    def state(self) -> dict[str, Any] | None:
        """The replica's /konductor, or None if it does not serve (yet, or any more)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/konductor", timeout=2
            ) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError):
            return None

    def is_leader(self) -> bool:
        state = self.state()
        return bool(state and state["leader"]["is_leader"])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def cluster(kube_crds: Any, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    ns = fresh_namespace(kube_crds)
    base = {
        "KONDUCTOR_STORE": "kubernetes",
        "KUBECONFIG": str(kube_crds.admin_kubeconfig),
        "KONDUCTOR_NAMESPACE": ns,
        "FA_WITNESS": str(tmp_path / "witness.log"),
        "FA_TTL": str(TTL),
    }
    started: list[Replica] = []

    def start(**env: str) -> Replica:
        replica = Replica({**base, **env}, tmp_path, len(started))
        started.append(replica)
        return replica

    start.namespace = ns  # type: ignore[attr-defined]
    start.kubeconfig = kube_crds.admin_kubeconfig  # type: ignore[attr-defined]
    start.witness = tmp_path / "witness.log"  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for replica in started:
            replica.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def witness_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def leaders_never_overlap(lines: list[list[str]]) -> list[tuple[str, int]]:
    """(pid, token) of each leadership in order; asserts at most one ran at any time."""
    active: dict[str, int] = {}
    order: list[tuple[str, int]] = []
    for words in lines:
        kind = words[0]
        if kind == "lead-start":
            token, pid = int(words[1]), words[2]
            assert not active, f"leader {pid} (token {token}) started while {active} led"
            active[pid] = token
            order.append((pid, token))
        elif kind == "lead-tick":
            assert active.get(words[2]) == int(words[1]), f"tick outside leadership: {words}"
        elif kind == "lead-stop":
            assert active.pop(words[2], None) == int(words[1]), words
        elif kind == "test-killed":
            active.pop(words[1], None)
    return order


def open_gate(cluster: Any, name: str) -> None:
    async def go() -> None:
        store = KubernetesStore(cluster.namespace, kubeconfig=cluster.kubeconfig)
        async with Client(store) as client:
            await client.open_gate(name)

    asyncio.run(go())


def test_three_replicas_start_in_order_and_keep_one_leader(cluster: Any) -> None:
    env = {"FA_GATES": "deps-ready", "FA_EXPECTED": "3"}
    first, second = cluster(**env), cluster(**env)
    witness: Path = cluster.witness

    # Gate: nobody runs the migration (or anything else) before the gate opens.
    time.sleep(3)
    assert first.proc.poll() is None
    assert second.proc.poll() is None
    assert witness_lines(witness) == []
    open_gate(cluster, "deps-ready")

    # Once + barrier: the migration runs, but nobody serves while a replica is missing.
    wait_for(lambda: any(w[0] == "migrate-done" for w in witness_lines(witness)), 60, "migration")
    time.sleep(2)
    assert first.state() is None, "served before all 3 arrived"
    assert second.state() is None, "served before all 3 arrived"
    third = cluster(**env)
    replicas = [first, second, third]
    states = wait_for(
        lambda: (s := [r.state() for r in replicas]) and all(s) and s, 120, "all 3 serving"
    )

    lines = witness_lines(witness)
    assert [w[0] for w in lines if w[0].startswith("migrate")] == ["migrate-start", "migrate-done"]
    assert sum(s["once"]["migrations"]["ran_here"] for s in states) == 1
    migrated_by = next(w[1] for w in lines if w[0] == "migrate-start")
    assert [s["pid"] for s in states if s["once"]["migrations"]["ran_here"]] == [int(migrated_by)]
    done_at = next(i for i, w in enumerate(lines) if w[0] == "migrate-done")
    app_starts = [i for i, w in enumerate(lines) if w[0] == "app-lifespan-start"]
    assert len(app_starts) == 3
    assert min(app_starts) > done_at
    identities = {s["identity"] for s in states}
    for s in states:
        assert s["ready"]
        assert s["gates"] == {"deps-ready": {"open": True}}
        barrier = s["barrier"]
        assert barrier["open"]
        assert barrier["expected"] == barrier["arrived_count"] == 3
        assert set(barrier["arrived"]) == identities

    # Exactly one leader, seen the same way over a few rounds.
    leader = wait_for(
        lambda: (ls := [r for r in replicas if r.is_leader()]) and len(ls) == 1 and ls[0],
        30,
        "one leader",
    )
    for _ in range(10):
        assert [r for r in replicas if r.is_leader()] == [leader]
        time.sleep(0.1)
    token_1 = leader.state()["leader"]["fencing_token"]  # type: ignore[index]

    # SIGTERM the leader: uvicorn runs the lifespan's shutdown, which releases the Lease.
    others = [r for r in replicas if r is not leader]
    sent = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    successor = wait_for(
        lambda: next((r for r in others if r.is_leader()), None), 10, "a successor", step=0.01
    )
    handover = time.monotonic() - sent
    # uvicorn re-raises the SIGTERM after its graceful shutdown, so it dies of it.
    assert leader.proc.wait(30) in (0, -signal.SIGTERM), leader.output()
    assert "Application shutdown complete" in leader.output()
    print(f"handover after SIGTERM: {handover * 1000:.0f} ms")
    assert handover < 1.0, f"handover took {handover:.2f}s"
    token_2 = successor.state()["leader"]["fencing_token"]  # type: ignore[index]
    assert token_2 > token_1

    # SIGKILL the new leader: nothing is released; the last one takes over after the TTL.
    last = next(r for r in others if r is not successor)
    time.sleep(1.5)  # let the successor tick and renew
    killed = time.monotonic()
    successor.proc.send_signal(signal.SIGKILL)
    successor.proc.wait(30)
    with witness.open("a") as f:
        f.write(f"test-killed {successor.proc.pid}\n")
    wait_for(last.is_leader, TTL + 10, "the last replica to lead", step=0.02)
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover * 1000:.0f} ms (ttl {TTL:g}s)")
    assert takeover < TTL + 3, f"takeover took {takeover:.2f}s"
    state = last.state()
    assert state is not None
    assert state["leader"]["fencing_token"] > token_2
    time.sleep(1.2)  # a tick or two of the last leader

    # The witness: one migration in all, leaderships in token order, never overlapping.
    lines = witness_lines(witness)
    assert sum(w[0] == "migrate-start" for w in lines) == 1
    order = leaders_never_overlap(lines)
    pids = [str(r.proc.pid) for r in (leader, successor, last)]
    assert [pid for pid, _ in order] == pids
    assert [token for _, token in order] == sorted({token for _, token in order})
    assert any(w[0] == "lead-tick" and w[2] == pids[2] for w in lines)


def test_a_gate_that_never_opens_fails_startup_naming_the_gate(cluster: Any) -> None:
    replica = cluster(FA_GATES="never-opens", FA_EXPECTED="0", FA_STARTUP_TIMEOUT="3")
    began = time.monotonic()
    rc = replica.proc.wait(120)
    took = time.monotonic() - began
    out = replica.output()
    assert rc != 0, out
    assert took >= 3, out
    assert "StartupTimeout" in out
    assert "gate 'never-opens' not open within 3s" in out
    assert "Application startup failed" in out
    assert witness_lines(cluster.witness) == []  # nothing ran after the gate


def test_a_blackholed_leader_steps_down_before_the_other_replica_leads(
    cluster: Any, tmp_path: Path
) -> None:
    # Replica A reaches the API server through a fault proxy (default store timeouts),
    # replica B directly. A leads; at a random moment the proxy is blackholed. The
    # witness is the file both append to (lead-start / lead-stop with wall-clock
    # times) and A's own /konductor, read over HTTP (not through the proxy).
    import random

    from tests.store.conftest import kubeconfig_via
    from tests.support.tcpproxy import TcpProxy

    margin = 1.0
    server = yaml_server(cluster.kubeconfig)
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port)).start()
    try:
        via = kubeconfig_via(cluster.kubeconfig, f"https://127.0.0.1:{proxy.port}", tmp_path)
        a = cluster(FA_EXPECTED="0", KUBECONFIG=str(via))
        wait_for(a.is_leader, 60, "A leading")
        b = cluster(FA_EXPECTED="0")
        wait_for(b.state, 60, "B serving")
        assert not b.is_leader()
        token_a = a.state()["leader"]["fencing_token"]  # type: ignore[index]
        time.sleep(random.uniform(0.0, TTL / 3 * 1.2))
        proxy.blackhole()
        cut, cut_wall = time.monotonic(), time.time()
        wait_for(lambda: not a.is_leader(), 30, "A stepping down", step=0.01)
        stepped_down = time.monotonic()
        wait_for(b.is_leader, 30, "B leading", step=0.01)
        lines = witness_lines(cluster.witness)
        pid_a, pid_b = str(a.proc.pid), str(b.proc.pid)
        a_stop = next(float(w[3]) for w in lines if w[0] == "lead-stop" and w[2] == pid_a)
        b_start = next(float(w[3]) for w in lines if w[0] == "lead-start" and w[2] == pid_b)
        print(
            f"\nfastapi blackhole: cut->is_leader false {stepped_down - cut:.3f}s, "
            f"cut->leader coroutine cancelled {a_stop - cut_wall:.3f}s, "
            f"cut->other replica leads {b_start - cut_wall:.3f}s"
        )
        # Safety: A's leader coroutine was cancelled before B's started.
        assert a_stop < b_start
        assert a_stop - cut_wall <= 0.9 * TTL + margin
        assert stepped_down - cut <= 0.9 * TTL + margin
        token_b = b.state()["leader"]["fencing_token"]  # type: ignore[index]
        assert token_b > token_a

        # The network heals; B shuts down (releasing the Lease) and A leads again.
        proxy.pass_through()
        time.sleep(1.0)
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(30)
        wait_for(a.is_leader, 30, "A leading again")
        assert a.state()["leader"]["fencing_token"] > token_b  # type: ignore[index]
        time.sleep(0.8)  # a tick of A's new leadership
        order = leaders_never_overlap(witness_lines(cluster.witness))
        assert [pid for pid, _ in order] == [pid_a, pid_b, pid_a]
    finally:
        proxy.close()


def yaml_server(kubeconfig: Path) -> str:
    import yaml

    doc = yaml.safe_load(kubeconfig.read_text())
    server: str = doc["clusters"][0]["cluster"]["server"]
    return server
