"""Running the real ``konductor`` command in its own process, as a user or a script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Configuration the tests must not inherit from the machine they run on.
_SCRUB = ("KUBECONFIG", "KONDUCTOR_STORE", "KONDUCTOR_NAMESPACE", "POD_NAME")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return {**base, "PYTHONPATH": str(ROOT), **extra}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "konductor", *args]


def konductor(
    *args: str, timeout: float = 120, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``konductor ARGS`` to its end (own session: no controlling terminal)."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
        env=env(**(extra_env or {})),
    )


def spawn(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``konductor ARGS`` in the background (own session, pipes for its output)."""
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
        env=env(**(extra_env or {})),
    )


def data(*args: str) -> Any:
    """``konductor ARGS -o json``, parsed; the command must succeed."""
    proc = konductor(*args, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def eventually(probe: Callable[[], T | None], timeout: float = 60, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None/False (tests only)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.2)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


# A child that records its pid and the signals it receives, and exits 10 + signal.
TRAP_CHILD = """
import os, signal, sys, time
marker = sys.argv[1]
def on(signum, frame):
    with open(marker, "a") as f:
        f.write(f"signal {signum}\\n")
    sys.exit(10 + signum)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on)
with open(marker, "a") as f:
    f.write(f"started {os.environ.get('KONDUCTOR_FENCING_TOKEN')}\\n")
time.sleep(120)
sys.exit(99)
"""


@dataclass(frozen=True)
class Target:
    """Where the commands under test point: global options for the real API server."""

    kubeconfig: Path
    namespace: str

    @property
    def opts(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig), "-n", self.namespace]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return konductor(*self.opts, *args, timeout=timeout)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return spawn(*self.opts, *args)

    def data(self, *args: str) -> Any:
        return data(*self.opts, *args)
