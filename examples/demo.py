"""konductor in one command: four processes coordinate through one store, and a witness checks.

    scripts/demo                      # sets up .venv when needed, then runs this file
    python examples/demo.py           # the same, in an environment with konductor

Four worker processes share konductor's embedded local store (a SQLite file;
no cluster needed). Each one:

1. arrives at a startup barrier and waits until all four are there;
2. runs the "migrations" through ``once``: exactly one of them does it;
3. runs three jobs under a semaphore with 2 permits: never more than two
   jobs run at once across the four processes;
4. campaigns for a leader lease; each leader does a short term and steps
   down, and the next candidate takes over.

Then a fifth process takes the only permit of another semaphore and is
killed with SIGKILL while holding it (it releases nothing); a sixth process
waits for that permit, which comes back within the permit's TTL.

Every claim is checked by a witness outside konductor: each process appends
what it does to a journal file under an exclusive ``flock``, with the time.
The closing table lists each claim with PASS or FAIL, and the exit code is 1
if any claim failed. Workers send their lines to this process, which prints
them one whole line at a time (workers never share the terminal). On a
cluster the same code runs against the Kubernetes API: set
KONDUCTOR_STORE=kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WORKERS = 4
JOBS = 3
PERMITS = 2
CRASH_TTL = 3.0


def journal(path: Path, event: str, who: str) -> None:
    """Append one witness line (time, event, who) under an exclusive file lock."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{time.time():.6f} {event} {who}\n")


# -- the processes --------------------------------------------------------------------


def _say(who: str) -> Callable[[str], None]:
    t0 = float(os.environ["DEMO_T0"])

    def say(text: str) -> None:
        sys.stdout.write(f"[{time.time() - t0:5.2f}s] {who}: {text}\n")
        sys.stdout.flush()

    return say


async def worker(n: int, witness: Path) -> None:
    from konductor import Client, Lease

    say = _say(f"worker {n}")
    me = str(n)
    async with Client() as client:
        say(f"started as {client.identity}")
        journal(witness, "arrive", me)
        info = await client.arrive_barrier("demo-start", expected=WORKERS)
        say(f"at the startup barrier ({info.arrived_count}/{info.expected} arrived)")
        await client.wait_barrier("demo-start", timeout=60)
        journal(witness, "barrier-open", me)
        say("barrier open: everybody is here")

        async def migrate() -> None:
            journal(witness, "migrate-start", me)
            say("running the migrations (once for the whole fleet)")
            await asyncio.sleep(0.3)
            journal(witness, "migrate-end", me)

        await client.once("demo-migrations", migrate, ttl=10, timeout=60)
        journal(witness, "migrations-done", me)
        say("migrations are done")

        for job in range(1, JOBS + 1):
            async with client.semaphore("demo-jobs", permits=PERMITS, ttl=10) as permit:
                journal(witness, "job-in", me)
                say(f"job {job} runs   (permit token {permit.token})")
                await asyncio.sleep(0.15)
                journal(witness, "job-out", me)

        async def lead(lease: Lease) -> None:
            journal(witness, f"lead-in:{lease.token}", me)
            say(f"is the LEADER now (term {lease.token})")
            await asyncio.sleep(0.3)
            journal(witness, "lead-out", me)
            say("steps down")

        await client.campaign("demo-leader", lead, ttl=5)
    say("done")


async def crasher(witness: Path) -> None:
    """Take the only permit of demo-crash, say so, and wait to be SIGKILLed."""
    from konductor import Client

    say = _say("crasher")
    client = Client()
    permit = await client.acquire_semaphore("demo-crash", permits=1, ttl=CRASH_TTL)
    journal(witness, "crash-held", "5")
    say(f"holds the only permit of demo-crash (ttl {CRASH_TTL:g}s, token {permit.token})")
    await asyncio.sleep(3600)  # killed long before


async def rescuer(witness: Path) -> None:
    """Wait for demo-crash's permit, which the killed crasher never released."""
    from konductor import Client

    say = _say("rescuer")
    async with Client() as client:
        say("waits for the permit the killed process still holds")
        async with client.semaphore("demo-crash", ttl=CRASH_TTL, timeout=60) as permit:
            journal(witness, "crash-regained", "6")
            say(f"got the permit back (token {permit.token})")


# -- the witness ----------------------------------------------------------------------


@dataclass
class Verdict:
    claim: str
    ok: bool
    seen: str


def verdicts(lines: list[str], codes: list[int]) -> list[Verdict]:
    """Judge every claim on the witness journal (``time event who`` lines)."""
    events = [(float(t), e, w) for t, e, w in (line.split() for line in lines)]
    events.sort(key=lambda x: x[0])

    def times(name: str) -> list[float]:
        return [t for t, e, _ in events if e == name]

    out: list[Verdict] = []
    arrivals, opened = times("arrive"), times("barrier-open")
    out.append(
        Verdict(
            f"all {WORKERS} met at the barrier before any went on",
            len(arrivals) == WORKERS and len(opened) == WORKERS and min(opened) >= max(arrivals),
            f"{len(arrivals)} arrived, {len(opened)} passed, none before the last arrival"
            if arrivals and opened and min(opened) >= max(arrivals)
            else f"{len(arrivals)} arrived, {len(opened)} passed",
        )
    )
    starts, ends, done = times("migrate-start"), times("migrate-end"), times("migrations-done")
    out.append(
        Verdict(
            "the migrations ran exactly once",
            len(starts) == 1 and len(ends) == 1,
            f"ran {len(starts)} time(s)",
        )
    )
    out.append(
        Verdict(
            "nobody went on before the migrations were done",
            len(done) == WORKERS and bool(ends) and min(done) >= max(ends),
            f"{len(done)} of {WORKERS} went on, all after the run ended"
            if ends and done and min(done) >= max(ends)
            else f"{len(done)} of {WORKERS} went on",
        )
    )
    inside = peak = ran = 0
    for _, e, _ in events:
        if e == "job-in":
            inside += 1
            ran += 1
            peak = max(peak, inside)
        elif e == "job-out":
            inside -= 1
    out.append(
        Verdict(
            f"never more than {PERMITS} jobs at once (semaphore, {PERMITS} permits)",
            peak <= PERMITS and ran == WORKERS * JOBS,
            f"at most {peak} at once; {ran} of {WORKERS * JOBS} jobs ran",
        )
    )
    leaders = peak_leaders = 0
    terms: list[tuple[str, int]] = []
    for _, e, w in events:
        if e.startswith("lead-in:"):
            leaders += 1
            peak_leaders = max(peak_leaders, leaders)
            terms.append((w, int(e.split(":")[1])))
        elif e == "lead-out":
            leaders -= 1
    tokens = [t for _, t in terms]
    out.append(
        Verdict(
            "exactly one leader per term, never two at once",
            peak_leaders == 1,
            f"at most {peak_leaders} leader at any moment",
        )
    )
    out.append(
        Verdict(
            "every worker led once, each term with a higher fencing token",
            sorted(w for w, _ in terms) == [str(n) for n in range(1, WORKERS + 1)]
            and tokens == sorted(set(tokens)),
            f"{len(terms)} terms, tokens {tokens}",
        )
    )
    held, killed, back = times("crash-held"), times("crash-killed"), times("crash-regained")
    if held and killed and back:
        after = back[0] - killed[0]
        out.append(
            Verdict(
                f"a SIGKILLed holder's permit came back within its TTL ({CRASH_TTL:g}s)",
                0 <= after <= CRASH_TTL,
                f"back {after:.2f}s after the SIGKILL",
            )
        )
    else:
        out.append(
            Verdict(
                f"a SIGKILLed holder's permit came back within its TTL ({CRASH_TTL:g}s)",
                False,
                f"held {len(held)}, killed {len(killed)}, regained {len(back)}",
            )
        )
    out.append(
        Verdict(
            "every process ended cleanly",
            all(c == 0 for c in codes),
            f"exit codes {codes}",
        )
    )
    return out


def table(results: list[Verdict]) -> str:
    width = max(len(v.claim) for v in results)
    rows = [f"  {'CLAIM'.ljust(width)}   RESULT   WHAT THE WITNESS SAW"]
    for v in results:
        rows.append(f"  {v.claim.ljust(width)}   {'PASS' if v.ok else 'FAIL':<6}   {v.seen}")
    return "\n".join(rows)


# -- the conductor --------------------------------------------------------------------


class Fleet:
    """Child processes whose output lines this process prints, one whole line at a time."""

    def __init__(self, witness: Path, env: dict[str, str]) -> None:
        self.witness = witness
        self.env = env
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(
        self, role: str, *extra: str, on_line: Callable[[str], None] | None = None
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--role", role, "--witness", str(self.witness), *extra],
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with self.lock:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if on_line is not None:
                    on_line(line)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        self.threads.append(thread)
        return proc

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10)

    def say(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="konductor demo")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--witness", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        asyncio.run(worker(args.worker, args.witness))
        return 0
    if args.role == "crasher":
        asyncio.run(crasher(args.witness))
        return 0
    if args.role == "rescuer":
        asyncio.run(rescuer(args.witness))
        return 0

    with tempfile.TemporaryDirectory(prefix="konductor-demo-") as tmp:
        env = dict(os.environ)
        env.setdefault("KONDUCTOR_STORE", f"local:{Path(tmp) / 'konductor.db'}")
        env["DEMO_T0"] = str(time.time())
        witness = Path(tmp) / "witness.log"
        witness.touch()
        fleet = Fleet(witness, env)
        fleet.say(f"konductor demo: {WORKERS} processes, store {env['KONDUCTOR_STORE']}\n")
        procs = [fleet.start("worker", "--worker", str(n)) for n in range(1, WORKERS + 1)]
        codes = [p.wait(timeout=300) for p in procs]

        fleet.say("\ncrash recovery: a holder is killed with SIGKILL and releases nothing\n")
        held, waiting = threading.Event(), threading.Event()
        crash = fleet.start(
            "crasher", on_line=lambda line: held.set() if "holds the only" in line else None
        )
        rescue: subprocess.Popen[str] | None = None
        if held.wait(timeout=60):
            acquired = time.time()
            rescue = fleet.start(
                "rescuer",
                on_line=lambda line: waiting.set() if "waits for the permit" in line else None,
            )
            waiting.wait(timeout=60)
            # Kill once the rescuer is surely queued (it then sees every renewal),
            # and between two of the holder's renewals (every ttl/3, from its
            # acquire): the permit must come back within one TTL of the last.
            period = CRASH_TTL / 3
            at = time.time() + 0.3
            phase = (at - acquired) % period
            at += (0.55 * period - phase) % period
            time.sleep(max(0.0, at - time.time()))
            crash.send_signal(signal.SIGKILL)
            journal(witness, "crash-killed", "5")
            t0 = float(env["DEMO_T0"])
            fleet.say(f"[{time.time() - t0:5.2f}s] demo: SIGKILL to the crasher")
        else:
            crash.kill()
        crash.wait()
        codes.append(0 if crash.returncode == -signal.SIGKILL else crash.returncode)
        codes.append(rescue.wait(timeout=120) if rescue is not None else 1)
        fleet.join()

        results = verdicts(witness.read_text().splitlines(), codes)
        fleet.say("\nwhat the witness saw:\n" + table(results))
        failed = [v for v in results if not v.ok]
        fleet.say(
            f"\n{len(results) - len(failed)} of {len(results)} claims hold"
            + ("" if not failed else f"; FAILED: {', '.join(v.claim for v in failed)}")
        )
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
