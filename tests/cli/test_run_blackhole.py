"""``semaphore run`` / ``lease run`` whose network to the API server hangs.

The holding ``konductor`` reaches the real API server through a fault proxy
(blackholed at a random moment while its command runs); a rival ``konductor``
reaches it directly. Witnesses outside konductor: a file each child appends
wall-clock timestamps to (``started``, ``term`` when SIGTERM arrives), and the
cut's time taken by the test on the same machine.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from konductor._engine._hub import WRITE_FLOOR
from tests.cli.support import Target, eventually, finish, kill_all
from tests.store.conftest import kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes

PY = sys.executable
TTL = 3.0
MARGIN = 1.0
GRACE = 2.0

# Records when it started and when SIGTERM came; "ignore" keeps running after SIGTERM.
CHILD = """
import os, signal, sys, time
marker, mode = sys.argv[1], sys.argv[2]
def log(what):
    with open(marker, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.getpid()}\\n")
def on_term(signum, frame):
    log("term")
    if mode != "ignore":
        sys.exit(10 + signum)
signal.signal(signal.SIGTERM, on_term)
log("started")
time.sleep(120)  # resumed after the handler returns (PEP 475) when ignoring
log("finished")
"""

RIVAL = """
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"started {time.time():.6f} {os.getpid()}\\n")
"""


def events(path: Path) -> dict[str, tuple[float, int]]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        what, at, pid = line.split()
        out[what] = (float(at), int(pid))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("kind", "mode"), [("semaphore", "obey"), ("lease", "obey"), ("semaphore", "ignore")]
)
def test_a_cut_off_run_stops_its_command_before_a_rival_runs(
    kube: Target, kube_crds: Any, tmp_path: Path, kind: str, mode: str
) -> None:
    proxy = TcpProxy.to(kube_crds.server)
    via = Target(
        kubeconfig_via(kube.kubeconfig, proxy.server, tmp_path),
        kube.namespace,
    )
    name = f"cut-{kind}"
    extra = ["--permits", "1"] if kind == "semaphore" else []
    mine, theirs = tmp_path / "mine.log", tmp_path / "theirs.log"
    common = [kind, "run", name, *extra, "--ttl", str(TTL), "--kill-grace", str(GRACE)]
    holder = via.spawn(*common, "--", PY, "-c", CHILD, str(mine), mode)
    rival = None
    try:
        eventually(lambda: "started" in events(mine), what="the command to start")
        time.sleep(random.uniform(0.0, TTL / 3 * 1.2))
        proxy.blackhole()
        cut = time.time()
        rival = kube.spawn(*common, "--timeout", "60", "--", PY, "-c", RIVAL, str(theirs))
        code, _, err = finish(holder, timeout=60)
        ended = time.time()
        eventually(lambda: "started" in events(theirs), timeout=60, what="the rival's command")
        term_at, child_pid = events(mine)["term"]
        rival_at = events(theirs)["started"][0]
        print(
            f"\ncli {kind} run ({mode}s SIGTERM) blackhole: cut->SIGTERM {term_at - cut:.3f}s, "
            f"cut->rival's command started {rival_at - cut:.3f}s, "
            f"cut->konductor exited {ended - cut:.3f}s"
        )
        # konductor says what happened and exits 1 (docs/cli.md).
        assert code == 1, err
        assert "was lost" in err
        assert "stopping the command" in err
        assert "finished" not in events(mine)
        assert not _alive(child_pid)
        # The command got SIGTERM at the loss: on the holder's own clock.
        assert term_at - cut <= 0.9 * TTL + MARGIN
        # konductor itself exits once the command is gone and its last attempt to
        # release has ended: bounded by WRITE_FLOOR on a hanging connection.
        release_bound = WRITE_FLOOR
        if mode == "obey":
            # It stopped before the rival's command started.
            assert term_at < rival_at
            assert ended - term_at < release_bound + MARGIN
        else:
            # It ignored SIGTERM: SIGKILL after the grace period, not before.
            assert GRACE - 0.1 <= ended - term_at <= GRACE + WRITE_FLOOR + MARGIN
        rc, _, rerr = finish(rival, timeout=60)
        assert rc == 0, rerr

        # The network heals: the same kind of holder runs again; nothing is left behind.
        proxy.pass_through()
        again = via.run(*common, "--timeout", "60", "--", "true")
        assert again.returncode == 0, again.stderr
        if kind == "semaphore":
            got = kube.data("semaphore", "get", name)
            assert got["holders"] == []
            assert got["queue"] == []
        else:
            assert kube.data("lease", "status", name)["held"] is False
    finally:
        kill_all([holder, *([rival] if rival else [])])
        proxy.close()
