"""``semaphore run``, ``lease run`` and ``once run`` on the real API server, with real signals.

Each ``konductor`` runs in a session of its own (no controlling terminal, as
under a supervisor or in a pod), so its child gets a process group of its own
and every signal is forwarded to it. What each test checks afterwards comes
from the store (no holder left) and from witnesses outside konductor: files
the children write, and a Redis counter of how many children run at once.
"""

from __future__ import annotations

import signal
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.cli.support import TRAP_CHILD, Target, eventually, finish, kill_all

pytestmark = pytest.mark.kubernetes

PY = sys.executable

# Inside: count this child in a Redis witness (current and peak), stay a while, leave.
WITNESS_CHILD = """
import sys, time, redis
key, hold = sys.argv[1], float(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=6379)
now = r.incr(key + ":inside")
r.eval("if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
       "redis.call('SET', KEYS[1], ARGV[1]) end", 1, key + ":peak", now)
r.incr(key + ":total")
time.sleep(hold)
r.decr(key + ":inside")
"""


def semaphore_clear(kube: Target, name: str) -> bool:
    got = kube.data("semaphore", "get", name)
    return got["holders"] == [] and got["queue"] == []


def lease_free(kube: Target, name: str) -> bool:
    return kube.data("lease", "status", name)["held"] is False


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("code", [0, 3, 42])
def test_semaphore_run_exits_with_the_childs_code(kube: Target, code: int) -> None:
    proc = kube.run(
        "semaphore",
        "run",
        "job",
        "--permits",
        "1",
        "--",
        PY,
        "-c",
        f"import os, sys; print(os.environ['KONDUCTOR_FENCING_TOKEN']); sys.exit({code})",
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "1\n"  # the fencing token of this (first) grant
    assert proc.stderr == ""
    assert semaphore_clear(kube, "job")


def test_lease_and_once_run_exit_with_the_childs_code(kube: Target) -> None:
    leader = kube.run("lease", "run", "leader", "--", "sh", "-c", "exit 5")
    assert leader.returncode == 5, leader.stderr
    assert lease_free(kube, "leader")
    failed = kube.run("once", "run", "seed", "--", "sh", "-c", "exit 6")
    assert failed.returncode == 6, failed.stderr
    got = kube.data("once", "status", "seed")
    assert (got["state"], got["attempt"]) == ("Failed", 1)
    assert "code 6" in got["error"]
    retried = kube.run("once", "run", "seed", "--", "sh", "-c", "echo seeded")
    assert (retried.returncode, retried.stdout) == (0, "seeded\n")
    assert kube.data("once", "status", "seed")["state"] == "Done"


def test_missing_command_exits_127_and_releases(kube: Target) -> None:
    proc = kube.run("semaphore", "run", "job", "--permits", "1", "--", "/no/such/command")
    assert proc.returncode == 127
    assert "command not found" in proc.stderr
    assert semaphore_clear(kube, "job")
    proc = kube.run("lease", "run", "leader", "--", "/etc/hostname")
    assert proc.returncode == 126
    assert lease_free(kube, "leader")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("kind", ["semaphore", "lease"])
def test_run_forwards_signals_and_releases(
    kube: Target, tmp_path: Path, kind: str, sig: signal.Signals
) -> None:
    marker = tmp_path / "child.log"
    extra = ["--permits", "1"] if kind == "semaphore" else []
    proc = kube.spawn(kind, "run", "guarded", *extra, "--", PY, "-c", TRAP_CHILD, str(marker))
    try:
        eventually(lambda: lines(marker), what="the child to start")
        proc.send_signal(sig)
        code, _, err = finish(proc)
        # The child got the signal exactly once, and konductor exits with its code.
        assert lines(marker)[1:] == [f"signal {sig.value}"]
        assert code == 10 + sig.value, err
        if kind == "semaphore":
            assert semaphore_clear(kube, "guarded")
        else:
            assert lease_free(kube, "guarded")
    finally:
        kill_all([proc])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_waiting_leaves_no_ticket_and_runs_nothing(
    kube: Target, tmp_path: Path, sig: signal.Signals
) -> None:
    holder = kube.spawn("semaphore", "acquire", "one", "--permits", "1")
    marker = tmp_path / "never"
    waiter = None
    try:
        eventually(lambda: _holders(kube, "one"), what="the holder")
        waiter = kube.spawn("semaphore", "run", "one", "--", "touch", str(marker))
        eventually(lambda: kube.data("semaphore", "get", "one")["queue"], what="the waiter")
        waiter.send_signal(sig)
        code, _, err = finish(waiter)
        assert code == 128 + sig.value
        assert f"interrupted by {sig.name}" in err
        assert kube.data("semaphore", "get", "one")["queue"] == []
        assert not marker.exists()
        holder.send_signal(signal.SIGINT)
        assert finish(holder)[0] == 0
        assert semaphore_clear(kube, "one")
    finally:
        kill_all([holder, *([waiter] if waiter else [])])


def _holders(kube: Target, name: str) -> list[object]:
    """The semaphore's holders (none while it does not exist yet)."""
    if kube.run("semaphore", "get", name).returncode != 0:
        return []
    holders: list[object] = kube.data("semaphore", "get", name)["holders"]
    return holders


@pytest.mark.parametrize("kind", ["semaphore", "lease"])
def test_a_lost_grant_stops_the_child(kube: Target, tmp_path: Path, kind: str) -> None:
    """An operator force-releases the grant: the holder learns at its next renewal and
    stops its command (SIGTERM) well within the TTL, and exits 1."""
    marker = tmp_path / "child.log"
    extra = ["--permits", "1"] if kind == "semaphore" else []
    proc = kube.spawn(
        kind, "run", "stolen", *extra, "--ttl", "3", "--", PY, "-c", TRAP_CHILD, str(marker)
    )
    try:
        eventually(lambda: lines(marker), what="the child to start")
        if kind == "semaphore":
            holder = kube.data("semaphore", "get", "stolen")["holders"][0]["identity"]
            kube.data("semaphore", "release", "stolen", "--holder", holder)
        else:
            kube.data("lease", "release", "stolen")
        code, _, err = finish(proc, timeout=30)
        assert code == 1, err
        assert "lost" in err
        assert "stopping the command" in err
        assert lines(marker)[1:] == [f"signal {signal.SIGTERM.value}"]
    finally:
        kill_all([proc])


def test_semaphore_run_never_exceeds_its_permits(kube: Target) -> None:
    key = f"konductor-cli-test:{uuid.uuid4().hex}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    procs = [
        kube.spawn(
            "semaphore", "run", "pool", "--permits", "2", "--", PY, "-c", WITNESS_CHILD, key, "1.5"
        )
        for _ in range(6)
    ]
    try:
        for p in procs:
            code, _, err = finish(p, timeout=300)
            assert code == 0, err
        assert int(r.get(f"{key}:total") or 0) == 6
        assert int(r.get(f"{key}:peak") or 0) == 2  # never more than 2, and contention was real
        assert int(r.get(f"{key}:inside") or 0) == 0
        assert semaphore_clear(kube, "pool")
    finally:
        kill_all(procs)
        r.delete(f"{key}:total", f"{key}:peak", f"{key}:inside")


def test_lease_run_is_exclusive(kube: Target) -> None:
    key = f"konductor-cli-test:{uuid.uuid4().hex}"
    r = redis.Redis(host="127.0.0.1", port=6379)
    procs = [
        kube.spawn("lease", "run", "singleton", "--", PY, "-c", WITNESS_CHILD, key, "0.5")
        for _ in range(3)
    ]
    try:
        for p in procs:
            code, _, err = finish(p, timeout=300)
            assert code == 0, err
        assert int(r.get(f"{key}:total") or 0) == 3
        assert int(r.get(f"{key}:peak") or 0) == 1
        assert lease_free(kube, "singleton")
    finally:
        kill_all(procs)
        r.delete(f"{key}:total", f"{key}:peak", f"{key}:inside")


def test_once_run_runs_the_command_once(kube: Target, tmp_path: Path) -> None:
    witness = tmp_path / "ran"
    script = f"echo $$ >> {witness}; sleep 1"
    procs = [kube.spawn("once", "run", "migrate", "--", "sh", "-c", script) for _ in range(3)]
    try:
        results = [finish(p, timeout=300) for p in procs]
        assert [code for code, _, _ in results] == [0, 0, 0], results
        assert len(lines(witness)) == 1
        assert sum("is done" in err for _, _, err in results) == 2
        got = kube.data("once", "status", "migrate")
        assert (got["state"], got["attempt"]) == ("Done", 1)
    finally:
        kill_all(procs)


def test_once_run_stopped_by_a_signal_is_abandoned_and_a_waiter_takes_over(
    kube: Target, tmp_path: Path
) -> None:
    marker = tmp_path / "first.log"
    first = kube.spawn("once", "run", "build", "--", PY, "-c", TRAP_CHILD, str(marker))
    second = None
    try:
        eventually(lambda: lines(marker), what="the first run")
        timed_out = kube.run("once", "run", "build", "--timeout", "1", "--", "true")
        assert timed_out.returncode == 3
        assert "still running" in timed_out.stderr
        second = kube.spawn("once", "run", "build", "--", "sh", "-c", "echo second")
        first.send_signal(signal.SIGTERM)
        code, _, err = finish(first)
        assert code == 10 + signal.SIGTERM.value
        assert "abandoned" in err
        code, out, err = finish(second)
        assert (code, out) == (0, "second\n"), err
        got = kube.data("once", "status", "build")
        assert (got["state"], got["attempt"]) == ("Done", 2)
    finally:
        kill_all([first, *([second] if second else [])])


def test_run_timeouts_exit_3(kube: Target) -> None:
    holder = kube.spawn("semaphore", "acquire", "full", "--permits", "1")
    leader = kube.spawn("lease", "acquire", "taken")
    try:
        eventually(lambda: _holders(kube, "full"), what="the holder")
        eventually(lambda: _lease_held(kube, "taken"), what="the leader")
        for args in (
            ["semaphore", "run", "full", "--timeout", "1", "--", "true"],
            ["lease", "run", "taken", "--timeout", "1", "--", "true"],
        ):
            proc = kube.run(*args)
            assert proc.returncode == 3, proc.stderr
            assert "timeout" in proc.stderr
        assert kube.data("semaphore", "get", "full")["queue"] == []
        holder.send_signal(signal.SIGTERM)
        leader.send_signal(signal.SIGTERM)
        assert finish(holder)[0] == 0
        assert finish(leader)[0] == 0
        assert semaphore_clear(kube, "full")
        assert lease_free(kube, "taken")
    finally:
        kill_all([holder, leader])


def _lease_held(kube: Target, name: str) -> bool:
    proc = kube.run("lease", "status", name, "-o", "json")
    return proc.returncode == 0 and '"held": true' in proc.stdout
