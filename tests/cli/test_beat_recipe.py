"""docs/celery.md's single-beat recipe, on the real API server, with a stand-in for beat.

Two replicas run the recipe's container command, ``konductor lease run
celery-beat --ttl 3 -- BEAT``; BEAT here is a small program that appends
``pid time`` to a file ten times a second (what matters is who "beats" and
when). One replica beats, the other waits; when the leader's container dies
(konductor and beat killed together), the other beats within one TTL, and
two beats never overlap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.cli.support import Target, eventually, kill_all

pytestmark = pytest.mark.kubernetes

BEAT = """
import os, sys, time
while True:
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()} {time.time():.3f}\\n")
    time.sleep(0.1)
"""
TTL = 3.0


def beats(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    text = path.read_text()
    # Only whole lines: the beat may be in the middle of writing the last one.
    for line in text[: text.rfind("\n") + 1].splitlines():
        pid, when = line.split()
        out.append((int(pid), float(when)))
    return out


def test_one_beat_across_two_replicas_and_a_takeover_within_one_ttl(
    kube: Target, tmp_path: Path
) -> None:
    log = tmp_path / "beats"
    command = ["lease", "run", "celery-beat", "--ttl", f"{TTL:g}", "--"]
    replicas = [kube.spawn(*command, sys.executable, "-c", BEAT, str(log)) for _ in range(2)]
    try:
        first = eventually(lambda: beats(log), what="a first beat")[0][0]
        time.sleep(2 * TTL)  # both replicas are up; only one may beat
        assert {pid for pid, _ in beats(log)} == {first}
        # The leader's container dies: its konductor and its beat, at once.
        leader = next(p for p in replicas if p.poll() is None and _is_parent_of(p.pid, first))
        os.killpg(leader.pid, signal.SIGKILL)
        os.killpg(first, signal.SIGKILL)  # the child has a process group of its own
        died = time.time()
        leader.wait(timeout=30)
        second = eventually(
            lambda: [pid for pid, _ in beats(log) if pid != first], timeout=30, what="a takeover"
        )[0]
        took_over = min(t for pid, t in beats(log) if pid == second)
        assert took_over - died <= TTL + 1.0  # one TTL, plus the new beat's start-up
        last_first = max(t for pid, t in beats(log) if pid == first)
        assert last_first < took_over  # never two beats at once
    finally:
        # The beats first: they hold the replicas' output pipes open.
        for pid in {pid for pid, _ in beats(log)}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        kill_all(replicas)


def _is_parent_of(parent: int, child: int) -> bool:
    try:
        stat = Path(f"/proc/{child}/stat").read_text()
    except FileNotFoundError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent
