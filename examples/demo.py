"""konductor in one command: four processes coordinate through one store.

    scripts/demo                      # sets up .venv, then runs this file
    python examples/demo.py           # the same, in an environment with konductor

Four worker processes share konductor's embedded local store (a SQLite file;
no cluster needed). Each one:

1. arrives at a startup barrier and waits until all four are there;
2. runs the "migrations" through ``once``: exactly one of them does it;
3. runs three jobs under a semaphore with 2 permits: never more than two
   jobs run at once across the four processes;
4. campaigns for a leader lease; each leader does a short term and steps
   down, and the next candidate takes over at once.

Every claim is checked by a witness outside konductor (a lock-protected
journal file), and the summary at the end says what it saw. On a cluster the
same code runs against the Kubernetes API: set KONDUCTOR_STORE=kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = 4
JOBS = 3
PERMITS = 2


def journal(path: Path, line: str) -> None:
    """Append one witness line under an exclusive file lock."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{time.time():.6f} {line}\n")


async def worker(n: int, witness: Path) -> None:
    from konductor import Client

    t0 = float(os.environ["DEMO_T0"])

    def say(text: str) -> None:
        print(f"[{time.time() - t0:5.2f}s] worker {n}: {text}", flush=True)

    async with Client() as client:
        say(f"started as {client.identity}")
        info = await client.arrive_barrier("demo-start", expected=WORKERS)
        say(f"at the startup barrier ({info.arrived_count}/{info.expected} arrived)")
        await client.wait_barrier("demo-start", timeout=60)
        say("barrier open: everybody is here")

        async def migrate() -> None:
            journal(witness, f"migrate {n}")
            say("running the migrations (once for the whole fleet)")
            await asyncio.sleep(0.3)

        await client.once("demo-migrations", migrate, ttl=10, timeout=60)
        say("migrations are done")

        for job in range(1, JOBS + 1):
            async with client.semaphore("demo-jobs", permits=PERMITS, ttl=10) as permit:
                journal(witness, f"job-in {n}")
                say(f"job {job} runs   (permit token {permit.token})")
                await asyncio.sleep(0.15)
                journal(witness, f"job-out {n}")

        async def lead(lease: object) -> None:
            token = getattr(lease, "token", "?")
            journal(witness, f"lead-in {n}")
            say(f"is the LEADER now (term {token})")
            await asyncio.sleep(0.3)
            journal(witness, f"lead-out {n}")
            say("steps down")

        await client.campaign("demo-leader", lead, ttl=5)
    say("done")


def summarize(witness: Path) -> list[str]:
    inside = peak = 0
    leaders = peak_leaders = 0
    migrations = 0
    for line in witness.read_text().splitlines():
        _, event, _who = line.split()
        if event == "migrate":
            migrations += 1
        elif event == "job-in":
            inside += 1
            peak = max(peak, inside)
        elif event == "job-out":
            inside -= 1
        elif event == "lead-in":
            leaders += 1
            peak_leaders = max(peak_leaders, leaders)
        elif event == "lead-out":
            leaders -= 1
    return [
        f"migrations ran {migrations} time(s)         (exactly once expected)",
        f"at most {peak} job(s) at once, all processes  (the semaphore has {PERMITS} permits)",
        f"at most {peak_leaders} leader(s) at any moment      (exactly one expected)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="konductor demo")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--witness", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        asyncio.run(worker(args.worker, args.witness))
        return 0

    with tempfile.TemporaryDirectory(prefix="konductor-demo-") as tmp:
        env = dict(os.environ)
        env.setdefault("KONDUCTOR_STORE", f"local:{Path(tmp) / 'konductor.db'}")
        env["DEMO_T0"] = str(time.time())
        witness = Path(tmp) / "witness.log"
        witness.touch()
        print(f"konductor demo: {WORKERS} processes, store {env['KONDUCTOR_STORE']}\n")
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(n), "--witness", str(witness)],
                env=env,
            )
            for n in range(1, WORKERS + 1)
        ]
        codes = [p.wait() for p in procs]
        print("\nwhat the witness saw:")
        for line in summarize(witness):
            print(f"  {line}")
        if any(codes):
            print(f"worker exit codes: {codes}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
