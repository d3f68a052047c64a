"""A stop signal at the very moment ``konductor`` exits must not change its exit code.

The race this pins down: the command had finished and decided its code (0
after ``released``, 1 after ``was lost``), but its signal handlers belonged to
the event loop, which resets them to the default action when it closes. A
SIGTERM in the last milliseconds (loop teardown, interpreter shutdown) then
killed the process: status -15 / 143 instead of the documented code. Each
try sends SIGTERM right after the command's last line, at a different delay,
so the signal lands all along the exit path.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.cli.support import Target, eventually, finish, kill_all

pytestmark = pytest.mark.kubernetes

TRIES = 24


def _line_then_sigterm(proc: subprocess.Popen[str], marker: str, delay: float) -> str:
    """Read stderr until a line contains ``marker``; SIGTERM ``delay`` seconds later."""
    assert proc.stderr is not None
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"no {marker!r} line; stderr was: {''.join(seen)}")
        seen.append(line)
        if marker in line:
            break
    if delay:
        time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return "".join(seen)


def _held(kube: Target, name: str) -> bool:
    got = kube.run("semaphore", "get", name, "-o", "json")
    return got.returncode == 0 and bool(json.loads(got.stdout)["holders"])


def _delay(i: int) -> float:
    # 0, then spread over the ~100 ms the exit takes (loop teardown, interpreter end).
    return 0.0 if i % 4 == 0 else (i % 12) * 0.009


def test_sigterm_right_after_release_keeps_exit_code_0(kube: Target) -> None:
    codes = []
    for i in range(TRIES):
        proc = kube.spawn("semaphore", "acquire", f"quick-{i}", "--permits", "1", "--for", "0.2")
        try:
            _line_then_sigterm(proc, "released semaphore", _delay(i))
            code, _, err = finish(proc)
        finally:
            kill_all([proc])
        codes.append(code)
        assert code == 0, (i, code, err)
    assert codes == [0] * TRIES


def test_sigterm_right_after_a_loss_keeps_exit_code_1(kube: Target) -> None:
    for i in range(6):
        name = f"lost-{i}"
        proc = kube.spawn("semaphore", "acquire", name, "--permits", "1", "--ttl", "3")
        try:
            eventually(lambda n=name: _held(kube, n), what="the holder")
            kube.data("semaphore", "release", name, "--all")
            _line_then_sigterm(proc, "was lost", _delay(i))
            code, _, err = finish(proc)
        finally:
            kill_all([proc])
        assert code == 1, (i, code, err)
