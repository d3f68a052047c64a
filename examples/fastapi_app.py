"""A FastAPI app whose replicas start in order and keep one leader for background jobs.

Every replica, at start-up (``konductor_lifespan``):

1. waits for the gate named by ``DEPS_GATE``, if set (say, "the database is
   up"; somebody opens it with ``client.open_gate`` or ``kubectl``);
2. runs the schema migration **once across all replicas** (the others wait
   until it is done);
3. waits at the barrier ``app-start`` until ``REPLICAS`` replicas have arrived;
4. campaigns for the Lease ``report-scheduler``; the leader runs the report
   job, which writes a row every half second with its fencing token, and the
   database refuses rows from a stale leader (a smaller token).

Handlers read the replica's state from ``request.state.konductor`` (no API
call): see ``/`` and ``/konductor``. The app's data lives in a SQLite file
(``APP_DB``, default ``/tmp/konductor-fastapi-example.db``): that is "the
database" being migrated, and it is also the witness of what happened.

All in one command: start 3 replicas with uvicorn, open the gate, watch the
migration run once and the barrier open, stop the leader with SIGTERM and see
another take over at once, then stop everything::

    python examples/fastapi_app.py demo

It uses konductor's local store (a SQLite file, one machine) unless
``KONDUCTOR_STORE`` says otherwise; with ``KONDUCTOR_STORE=kubernetes``,
``KUBECONFIG`` and ``KONDUCTOR_NAMESPACE`` it runs against a cluster.

Or run replicas yourself (``pip install 'konductor[fastapi]'``), each in its
own shell, all with the same store::

    export KONDUCTOR_STORE=local:/tmp/konductor.db REPLICAS=2
    uvicorn examples.fastapi_app:app --port 8001
    uvicorn examples.fastapi_app:app --port 8002
    curl localhost:8001/konductor
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from konductor import Client, Lease
from konductor.integrations.fastapi import KonductorStateDep, LeaderConfig, konductor_lifespan

REPLICAS = int(os.environ.get("REPLICAS", "1"))
DEPS_GATE = os.environ.get("DEPS_GATE", "")


@contextmanager
def db() -> Iterator[sqlite3.Connection]:
    path = os.environ.get("APP_DB", "/tmp/konductor-fastapi-example.db")
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield conn
    finally:
        conn.close()


def _migrate() -> None:
    with db() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version, applied_by, at)")
        conn.execute("CREATE TABLE IF NOT EXISTS reports (token, pid, at)")
        conn.execute(
            "INSERT INTO schema_migrations VALUES (1, ?, ?)", (f"pid {os.getpid()}", time.time())
        )


async def migrate() -> None:
    """The schema migration: konductor runs it once, whichever replica gets there first."""
    await asyncio.sleep(0.5)  # a migration takes a while; the other replicas wait
    await asyncio.to_thread(_migrate)


def _write_report(token: int) -> bool:
    """A fenced write: refused if a leader with a greater token has written already."""
    with db() as conn:
        cur = conn.execute(
            "INSERT INTO reports SELECT ?, ?, ? "
            "WHERE ? >= (SELECT coalesce(max(token), -1) FROM reports)",
            (token, os.getpid(), time.time(), token),
        )
        return cur.rowcount == 1


async def report_scheduler(lease: Lease) -> None:
    """The background job: runs only on the leader, cancelled when leadership is lost."""
    while True:
        if not await asyncio.to_thread(_write_report, lease.token):
            return  # a newer leader exists; konductor will notice the loss too
        await asyncio.sleep(0.5)


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The app's own lifespan (a connection pool, caches...): runs after the migration."""
    yield {"started_at": time.time()}


app = FastAPI(
    lifespan=konductor_lifespan(
        gates=[DEPS_GATE] if DEPS_GATE else [],
        once={"schema-migration": migrate},
        barrier=("app-start", REPLICAS),
        leader=LeaderConfig("report-scheduler", run=report_scheduler, ttl=5),
        startup_timeout=120,
        inner=app_lifespan,
    )
)


@app.get("/")
async def hello(request: Request, k: KonductorStateDep) -> dict[str, Any]:
    role = "leader" if k.is_leader else "follower"
    return {"replica": k.identity, "role": role, "up_since": request.state.started_at}


@app.get("/konductor")
async def konductor_state(k: KonductorStateDep) -> dict[str, Any]:
    return {"pid": os.getpid(), **k.to_dict()}


# -- the demo: 3 replicas on this machine ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _state(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/konductor", timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except OSError:
        return None


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def demo(replicas: int) -> None:
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "APP_DB": str(Path(tmp) / "app.db"),
            "REPLICAS": str(replicas),
            "DEPS_GATE": "deps-ready",
            "PYTHONPATH": str(root),
        }
        env.setdefault("KONDUCTOR_STORE", f"local:{Path(tmp) / 'konductor.db'}")
        os.environ.update({k: env[k] for k in ("KONDUCTOR_STORE", "APP_DB")})
        ports = [_free_port() for _ in range(replicas)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(p)],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(Path(tmp) / f"replica-{i}.log", "wb"),  # noqa: SIM115
            )
            for i, p in enumerate(ports)
        ]
        by_pid = {proc.pid: i for i, proc in enumerate(procs)}
        try:
            print(f"{replicas} replicas started; they wait for gate 'deps-ready'")
            time.sleep(2)
            migrated = Path(env["APP_DB"]).exists()
            print(f"  before the gate opens: migration ran: {migrated}")

            async def open_gate() -> None:
                async with Client() as client:
                    await client.open_gate("deps-ready")

            asyncio.run(open_gate())
            print("gate 'deps-ready' opened")
            states = _wait(
                lambda: (s := [_state(p) for p in ports]) and all(s) and s, 120, "the replicas"
            )
            ran = [by_pid[s["pid"]] for s in states if s["once"]["schema-migration"]["ran_here"]]
            with db() as conn:
                rows = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
            print(f"schema migration ran on replica(s) {ran}; schema_migrations has {rows} row(s)")
            arrived = {s["barrier"]["arrived_count"] for s in states}
            print(f"all {replicas} passed barrier 'app-start' (arrived: {sorted(arrived)})")

            def leaders() -> list[dict[str, Any]]:
                found = [s for p in ports if (s := _state(p)) and s["leader"]["is_leader"]]
                return found if len(found) == 1 else []

            first = _wait(leaders, 30, "a leader")[0]
            print(
                f"leader: replica {by_pid[first['pid']]} (token {first['leader']['fencing_token']})"
            )
            time.sleep(1.5)
            stopped = time.monotonic()
            procs[by_pid[first["pid"]]].send_signal(signal.SIGTERM)
            second = _wait(
                lambda: (ls := leaders()) and ls[0]["pid"] != first["pid"] and ls, 30, "handover"
            )[0]
            took = (time.monotonic() - stopped) * 1000
            print(
                f"SIGTERM to the leader: replica {by_pid[second['pid']]} leads after "
                f"{took:.0f} ms (token {second['leader']['fencing_token']})"
            )
            time.sleep(1.5)
            with db() as conn:
                tokens = [t for (t,) in conn.execute("SELECT token FROM reports ORDER BY rowid")]
            ordered = tokens == sorted(tokens)
            print(f"report rows written by leaders: {len(tokens)}; tokens in order: {ordered}")
            print(f"exactly one migration: {rows == 1}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    demo(args.replicas)
