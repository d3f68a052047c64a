"""examples/cli_demo.sh runs on the local store, every konductor a process of its own."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tests.cli.support import env

ROOT = Path(__file__).resolve().parents[2]


def test_cli_demo_on_the_local_store(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / "cli_demo.sh"), str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        env=env(KONDUCTOR=f"{shlex.quote(sys.executable)} -m konductor"),
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    # 5 jobs through 2 permits: each ran once with its own fencing token, and the
    # jobs' own log never saw more than 2 inside at once (nor fewer: real contention).
    tokens = sorted(
        int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "ran with token" in line
    )
    assert tokens == [1, 2, 3, 4, 5]
    assert "peak concurrency: 2" in out
    assert out.count("arrived (open)") == 3
    assert out.count("migrating the schema") == 1
    assert "once 'migrate' is done" in proc.stderr
    assert "leading with token 0" in out
    assert out.count("gate 'deploy' is open") == 2
    assert "the command's own code: 7" in out
    assert "timeout: 3" in out
    assert "usage error: 2" in out
    final, watched = out.split("== 7. everything in the namespace")[1].split("== 8. ")
    final = final.splitlines()
    assert [line.split()[:2] for line in final[2:]] == [
        ["Semaphore", "reports"],
        ["Barrier", "start-line"],
        ["Gate", "deploy"],
        ["Once", "migrate"],
        ["Lease", "scheduler"],
    ]
    assert "0/2 in use" in final[2]
    # 8: describe shows the holder and the waiter at queue position 1; the watch saw it too.
    rows = [line.split() for line in watched.splitlines()]
    assert ["State:", "2/2", "in", "use,", "1", "waiting"] in rows
    assert any(r[:2] == ["holder", "-"] for r in rows)
    assert any(r[:2] == ["waiting", "1"] for r in rows)
    (count,) = [r[3] for r in rows if r[:2] == ["the", "watch"]]
    assert int(count) >= 1
