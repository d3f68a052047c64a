"""CoordinatedEngine across real processes: PostgreSQL's own count is the witness.

Every worker (tests/integrations/sqlalchemy_worker.py) is a separate OS
process with its own SyncClient / Client on the real kube-apiserver, tagging
its connections with an ``application_name`` unique to the test. A sampler
thread here counts those connections in ``pg_stat_activity`` continuously:
that count, not konductor's bookkeeping, is what must stay under the cap.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from konductor.store import SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes
WORKER = Path(__file__).with_name("sqlalchemy_worker.py")
ROOT = Path(__file__).resolve().parents[2]
DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test application_name=konductor-witness"
MODES = ["sync", "async"]


@dataclass
class Witness:
    """Samples pg_stat_activity for application names starting with ``prefix``."""

    prefix: str
    peak: int = 0
    samples: int = 0
    by_app: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Witness:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s GROUP BY application_name",
                    (self.prefix + "%",),
                ).fetchall()
                self.by_app = {name: n for name, n in rows}
                self.peak = max(self.peak, sum(self.by_app.values()))
                self.samples += 1
                time.sleep(0.005)

    def count(self, app: str) -> int:
        return self.by_app.get(app, 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class Worker:
    def __init__(self, env: Any, ns: str, *args: str) -> None:
        self.proc = subprocess.Popen(
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
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.strip())
                self._new.notify_all()

    def wait_line(self, predicate: Any, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no such line; got {self.lines}; stderr: {self.stderr_tail()}"
                    )
                self._new.wait(min(left, 0.5))

    def held(self) -> int:
        with self._new:
            values = [int(line.split()[1]) for line in self.lines if line.startswith("HELD ")]
        return values[-1] if values else 0

    def max_held(self) -> int:
        with self._new:
            return max(
                (int(line.split()[1]) for line in self.lines if line.startswith("HELD ")),
                default=0,
            )

    def finish(self, timeout: float = 600) -> str:
        self.proc.wait(timeout)
        self._reader.join(10)
        assert self.proc.returncode == 0, self.stderr_tail()
        return "\n".join(self.lines)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read()[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def run(kube_crds: Any, tmp_path: Path) -> Iterator[Any]:
    ns = fresh_namespace(kube_crds)
    prefix = f"kt-{uuid.uuid4().hex[:8]}-"
    workers: list[Worker] = []
    witness = Witness(prefix).start()

    class Run:
        namespace = ns
        kubeconfig = kube_crds.admin_kubeconfig
        app_prefix = prefix
        seen = witness
        path = tmp_path

        def worker(self, app: str, *args: str, mode: str = "sync") -> Worker:
            extra = ["--async"] if mode == "async" else []
            w = Worker(kube_crds, ns, "--app", prefix + app, *extra, *args)
            workers.append(w)
            return w

    try:
        yield Run()
    finally:
        witness.stop()
        for w in workers:
            w.kill()


@pytest.mark.parametrize("mode", MODES)
def test_four_processes_never_exceed_the_cluster_cap(run: Any, mode: str) -> None:
    """4 processes x pool 5 under a cap of 8, pools saturated; PostgreSQL never sees 9."""
    go = run.path / "go"
    queries, workers = 25, 8
    procs = [
        run.worker(
            f"p{i}",
            "--semaphore",
            "orders-db",
            "--cap",
            "8",
            "--pool-size",
            "5",
            "--workers",
            str(workers),
            "--queries",
            str(queries),
            "--grow-interval",
            "1",
            "--go",
            str(go),
            mode=mode,
        )
        for i in range(4)
    ]
    for p in procs:
        p.wait_line(lambda line: line == "CREATED")
    go.touch()  # all four reserve at once
    outputs = [p.finish() for p in procs]
    for out in outputs:
        assert f"DONE {queries * workers}" in out  # every query completed
    held_peaks = [p.max_held() for p in procs]
    peak = run.seen.peak
    print(
        f"[{mode}] pg_stat_activity peak={peak} over {run.seen.samples} samples; "
        f"per-process max held={held_peaks}"
    )
    assert run.seen.samples > 100
    assert peak <= 8, f"PostgreSQL saw {peak} connections under a cap of 8"
    assert peak == 8  # the contention was real: the cap was reached
    assert all(h <= 5 for h in held_peaks)
    for i in range(4):  # every connection is closed at the end
        wait_gone(run, f"p{i}")


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_process_reservation_is_reclaimed_and_grown_into(run: Any, mode: str) -> None:
    ttl = 3.0
    stop = run.path / "stop"
    common = [
        "--semaphore",
        "reports-db",
        "--cap",
        "8",
        "--pool-size",
        "5",
        "--ttl",
        str(ttl),
        "--grow-interval",
        "0.5",
        "--workers",
        "8",
        "--until",
        str(stop),
        "--no-rebalance",  # first come, first served: the second stays at 3
    ]
    first = run.worker("first", *common, mode=mode)
    first.wait_line(lambda line: line == "HELD 5")
    second = run.worker("second", *common, mode=mode)
    second.wait_line(lambda line: line == "HELD 3")
    # Both saturate their pools: PostgreSQL sees 5 + 3 of them.
    deadline = time.monotonic() + 60
    while (
        run.seen.count(run.app_prefix + "first") < 5
        or run.seen.count(run.app_prefix + "second") < 3
    ):
        assert time.monotonic() < deadline, run.seen.by_app
        time.sleep(0.05)
    time.sleep(2 * ttl)  # the second keeps trying to grow, and must not while first lives
    assert second.held() == 3

    first.kill()
    killed = time.monotonic()
    second.wait_line(lambda line: line == "HELD 5", timeout=ttl + 30)
    grew_after = time.monotonic() - killed
    while run.seen.count(run.app_prefix + "second") < 5:  # the witness sees the growth too
        assert time.monotonic() - killed < ttl + 30, run.seen.by_app
        time.sleep(0.05)
    stop.touch()
    second.finish()
    print(
        f"[{mode}] reservation reclaimed and grown into {grew_after:.1f}s after SIGKILL "
        f"(ttl {ttl:g}s); pg_stat_activity peak={run.seen.peak}"
    )
    assert grew_after <= ttl + 10  # within the TTL plus a margin (grow interval, slow CI)
    assert grew_after >= ttl / 2  # and not before the dead process's TTL could pass
    assert run.seen.peak <= 8


@pytest.mark.parametrize("mode", MODES)
def test_exit_without_dispose_gives_the_permits_back(run: Any, mode: str) -> None:
    # A long TTL: the permits must come back at exit, not by expiry.
    w = run.worker(
        "quitter",
        "--semaphore",
        "quit-db",
        "--cap",
        "4",
        "--pool-size",
        "3",
        "--ttl",
        "120",
        "--queries",
        "3",
        "--workers",
        "4",
        "--no-dispose",
        mode=mode,
    )
    assert "DONE 12" in w.finish()
    state = semaphore_state(run, "quit-db")
    assert state["inUse"] == 0, state
    wait_gone(run, "quitter")


def test_forked_workers_each_reserve_their_own(run: Any) -> None:
    """Parent reserves 2 and forks 2 children that use the same engine: 2 + 2 + 2 = cap 6."""
    w = run.worker(
        "forky",
        "--semaphore",
        "forked-db",
        "--cap",
        "6",
        "--pool-size",
        "2",
        "--min",
        "2",
        "--fork",
        "2",
        "--workers",
        "4",
        "--queries",
        "10",
    )
    out = w.finish()
    parent = json.loads(next(line for line in out.splitlines() if line.startswith("PARENT "))[7:])
    after_line = next(line for line in out.splitlines() if line.startswith("AFTER "))
    after = json.loads(after_line[6:].rsplit(" held ", 1)[0])
    children = [line for line in out.splitlines() if line.startswith("CHILD ")]
    assert len(children) == 2
    for line in children:
        assert line.endswith("held 2 done 40"), line  # each child: its own 2, all queries done
    assert parent["inUse"] == 2
    assert len(parent["holders"]) == 1
    # The children gave theirs back as they exited; the parent's reservation is intact.
    assert after["inUse"] == 2, (parent, after)
    assert after["holders"] == parent["holders"], (parent, after)
    assert after_line.endswith("held 2")
    print(f"[fork] pg_stat_activity peak={run.seen.peak} (cap 6)")
    assert run.seen.peak <= 6


def semaphore_state(run: Any, name: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with KubernetesStore(run.namespace, kubeconfig=run.kubeconfig) as store:
            obj = await store.get(SEMAPHORE, name)
            return dict(obj.status)

    return asyncio.run(read())


def wait_gone(run: Any, app: str) -> None:
    deadline = time.monotonic() + 10
    while run.seen.count(run.app_prefix + app):
        assert time.monotonic() < deadline, run.seen.by_app
        time.sleep(0.05)


#: The documented convergence time (docs/sqlalchemy.md, "Fair shares"): a newcomer holds
#: its share within 2 x grow_interval plus the longest checkout and a few API round trips
#: after it starts. The test allows a loaded 2-core CI machine much more; it prints the
#: times it measured.
GROW_INTERVAL = 1.0
CONVERGE_WITHIN = 20.0


def wait_shares(run: Any, procs: list[Worker], want: list[int], since: float) -> float:
    """Until every process holds its share and PostgreSQL shows exactly that many
    connections per process; the seconds it took since ``since``."""
    apps = [run.app_prefix + f"p{i}" for i in range(len(procs))]
    while True:
        held = [p.held() for p in procs]
        seen = [run.seen.count(app) for app in apps]
        if sorted(held) == sorted(want) and seen == held:
            return time.monotonic() - since
        assert time.monotonic() - since < CONVERGE_WITHIN, (held, seen, run.seen.by_app)
        for p in procs:
            assert p.proc.poll() is None, p.stderr_tail()
        time.sleep(0.05)


@pytest.mark.parametrize("mode", MODES)
def test_three_processes_started_one_after_another_converge_to_three_each(
    run: Any, mode: str
) -> None:
    """Cap 9, pool_size 9 each, pools kept busy: 9, then 5 + 4, then 3 + 3 + 3 in
    pg_stat_activity, never more than 9 connections in all."""
    stop = run.path / "stop"
    common = [
        "--semaphore",
        "fair-db",
        "--cap",
        "9",
        "--pool-size",
        "9",
        "--grow-interval",
        str(GROW_INTERVAL),
        "--workers",
        "12",
        "--sleep",
        "0.05",
        "--until",
        str(stop),
    ]
    procs: list[Worker] = []
    times = []
    for i, want in enumerate(([9], [5, 4], [3, 3, 3])):
        procs.append(run.worker(f"p{i}", *common, mode=mode))
        procs[-1].wait_line(lambda line: line == "START", timeout=60)
        times.append(wait_shares(run, procs, want, time.monotonic()))
    # Steady: for 3 grow intervals every process holds exactly 3, and PostgreSQL agrees.
    apps = [run.app_prefix + f"p{i}" for i in range(3)]
    steady_until = time.monotonic() + 3 * GROW_INTERVAL
    samples = 0
    while time.monotonic() < steady_until:
        assert [p.held() for p in procs] == [3, 3, 3]
        assert [run.seen.count(app) for app in apps] == [3, 3, 3], run.seen.by_app
        samples += 1
        time.sleep(0.05)
    stop.touch()
    for p in procs:
        p.finish()
    print(
        f"[{mode}] converged {', '.join(f'{t:.1f}s' for t in times)} after each start "
        f"(grow_interval {GROW_INTERVAL:g}s); pg_stat_activity peak={run.seen.peak} over "
        f"{run.seen.samples} samples; steady checks={samples}"
    )
    assert run.seen.samples > 100
    assert run.seen.peak <= 9, f"PostgreSQL saw {run.seen.peak} connections under a cap of 9"
    assert run.seen.peak == 9  # the cap was reached: the contention was real
    for i in range(3):
        wait_gone(run, f"p{i}")
