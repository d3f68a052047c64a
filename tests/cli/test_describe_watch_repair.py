"""``konductor describe``, ``status --watch`` and ``repair`` on the real API server.

Each command is a process of its own, as an operator runs it; the objects
are made by other konductor processes and, for a broken object, by a
direct write of state no schema can refuse (a duplicate id).
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import threading
from typing import Any

from konductor import InvalidArgument
from konductor.cli._options import option_message
from konductor.store import SEMAPHORE, KubernetesStore
from tests.cli.support import Target, eventually, finish, kill_all


def _waiting(kube: Target, name: str) -> Any:
    proc = kube.run("describe", "semaphore", name, "-o", "json")
    if proc.returncode != 0:
        return None
    got = json.loads(proc.stdout)
    return got if any(e["role"] == "waiting" for e in got["entries"]) else None


def test_describe_shows_the_holder_and_the_queue_with_positions(kube: Target) -> None:
    holder = kube.spawn("semaphore", "acquire", "gpu", "--permits", "1", "--ttl", "6")
    waiter = None
    try:
        eventually(lambda: kube.run("describe", "semaphore", "gpu").returncode == 0, what="gpu")
        waiter = kube.spawn("semaphore", "acquire", "gpu", "--ttl", "6", "--for", "0")
        got = eventually(lambda: _waiting(kube, "gpu"), what="a waiter")
        assert got["kind"] == "Semaphore"
        assert got["namespace"] == kube.namespace
        assert got["state"] == "1/1 in use, 1 waiting"
        assert got["capacity"] == 1
        assert got["nextToken"] == 2
        held, queued = got["entries"]
        assert (held["role"], held["token"], held["position"]) == ("holder", 1, None)
        assert (queued["role"], queued["position"], queued["token"]) == ("waiting", 1, None)
        for entry in (held, queued):
            assert entry["ttlSeconds"] == 6
            assert 0 <= entry["expiresInSeconds"] <= 6
        text = kube.run("describe", "semaphore", "gpu").stdout
        assert "State:       1/1 in use, 1 waiting" in text
        rows = [line.split() for line in text.splitlines()]
        header = next(r for r in rows if r[:2] == ["ROLE", "POS"])
        assert header[-1] == "EXPIRES"
        assert any(r[:2] == ["waiting", "1"] for r in rows)
    finally:
        holder.send_signal(signal.SIGTERM)
        assert finish(holder)[0] == 0
        if waiter is not None:
            assert finish(waiter)[0] == 0  # granted once the holder let go
    missing = kube.run("describe", "semaphore", "nothing")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert kube.run("describe", "spaceship", "x").returncode == 2


def test_status_watch_prints_a_json_line_after_every_change(kube: Target) -> None:
    watcher = kube.spawn("status", "--watch", "-o", "json")
    lines: list[dict[str, Any]] = []
    seen = threading.Event()

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.append(json.loads(line))
            seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    procs: list[subprocess.Popen[str]] = [watcher]
    try:
        eventually(lambda: lines, what="the first snapshot")
        assert lines[0]["objects"] == []
        assert lines[0]["namespace"] == kube.namespace
        holder = kube.spawn("mutex", "acquire", "door", "--ttl", "6")
        procs.append(holder)

        def holder_seen() -> Any:
            return next(
                (
                    o
                    for snap in lines
                    for o in snap["objects"]
                    if o["name"] == "door" and o["state"] == "locked"
                ),
                None,
            )

        door = eventually(holder_seen, what="the lock in a watch line")
        (entry,) = door["entries"]
        assert entry["role"] == "holder"
        assert 0 <= entry["expiresInSeconds"] <= 6
        waiter = kube.spawn("mutex", "acquire", "door", "--ttl", "6", "--for", "0")
        procs.append(waiter)

        def queued() -> Any:
            return next(
                (
                    e
                    for snap in lines
                    for o in snap["objects"]
                    for e in o["entries"]
                    if e["role"] == "waiting"
                ),
                None,
            )

        assert eventually(queued, what="the waiter in a watch line")["position"] == 1
        holder.send_signal(signal.SIGTERM)
        assert finish(holder)[0] == 0
        assert finish(waiter)[0] == 0
        eventually(
            lambda: lines[-1]["objects"] and lines[-1]["objects"][0]["state"] == "free",
            what="the lock free again",
        )
        watcher.send_signal(signal.SIGTERM)  # how a watch ends: exit 0
        code, _, err = finish(watcher)
        assert code == 0, err
    finally:
        kill_all(procs)


def test_repair_fixes_a_duplicate_id_and_describe_reports_it(kube: Target) -> None:
    async def break_it() -> None:
        async with KubernetesStore(kube.namespace, kubeconfig=kube.kubeconfig) as store:
            obj = await store.get(SEMAPHORE, "sem")
            bad = copy.deepcopy(obj.status)
            bad["holders"][1]["id"] = bad["holders"][0]["id"]
            await store.replace_status(SEMAPHORE, "sem", bad, version=obj.version)

    a = kube.spawn("semaphore", "acquire", "sem", "--permits", "2", "--ttl", "30")
    b = kube.spawn("semaphore", "acquire", "sem", "--permits", "2", "--ttl", "30")
    try:
        eventually(
            lambda: (
                kube.run("semaphore", "get", "sem").returncode == 0
                and len(kube.data("semaphore", "get", "sem")["holders"]) == 2
            ),
            what="two holders",
        )
        asyncio.run(break_it())
        got = kube.data("describe", "semaphore", "sem")
        assert got["state"].startswith("corrupt: ")
        assert "status.holders[1].id" in got["problem"]
        text = kube.run("describe", "semaphore", "sem").stdout
        assert "Problem: " in text
        assert "konductor repair semaphore sem" in text
        status = kube.run("status")
        assert status.returncode == 0
        assert "corrupt: 2/2 in use" in status.stdout
        fixed = kube.data("repair", "semaphore", "sem")
        assert fixed["repaired"] is True
        assert fixed["fixed"] == [fixed["fixed"][0]]
        assert fixed["fixed"][0].startswith("removed status.holders[1]: it repeats id")
        assert fixed["after"]["problem"] is None
        assert fixed["after"]["state"] == "1/2 in use"
        again = kube.run("repair", "semaphore", "sem")
        assert again.returncode == 0
        assert "nothing to repair" in again.stdout
    finally:
        kill_all([a, b])


def test_option_errors_keep_the_cores_message_and_name_the_flag() -> None:
    exc = InvalidArgument("ttl must be positive, got 0s; e.g. ttl=15")
    assert option_message(exc) == "ttl must be positive, got 0s; e.g. ttl=15"
    exc.argument = "ttl"  # type: ignore[attr-defined]  # as the core sets it
    assert option_message(exc) == "option --ttl: ttl must be positive, got 0s; e.g. ttl=15"
    exc.argument = "not_an_option"  # type: ignore[attr-defined]
    assert option_message(exc) == "ttl must be positive, got 0s; e.g. ttl=15"
