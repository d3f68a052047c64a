"""Three worker processes share one provider quota: 20 calls per second, cluster-wide.

Each process calls a (pretend) provider API through
``@konductor.with_rate_limit("provider-api", rate="20/s")``. The processes
share the rate: each spends a share of it from a local token bucket, so a call
costs no API request, and together they stay within ``burst + rate * T`` calls
in any window of T seconds (burst: one second of the rate). One process is
busy, two call now and then: the busy one ends up with most of the rate.

Runs on the embedded local store (one SQLite file shared by the processes):

    python examples/rate_limit.py

With a cluster (konductor's CRDs installed), set KONDUCTOR_STORE=kubernetes
(and optionally KONDUCTOR_NAMESPACE), then run the same command.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import konductor
from konductor import LocalStore

RATE = 20
SECONDS = 8.0
TTL = 3.0  # short, so that shares move within seconds in this demo (default 15 s)


def worker(db: str, busy: bool, calls: multiprocessing.Queue[tuple[str, float]]) -> None:
    if not os.environ.get("KONDUCTOR_STORE"):
        konductor.configure(lambda: LocalStore(db))
    me = f"{'busy' if busy else 'idle'}-{os.getpid()}"

    @konductor.with_rate_limit("provider-api", rate=f"{RATE}/s", ttl=TTL)
    def call_provider() -> None:
        calls.put((me, time.time()))  # the provider call would go here

    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        call_provider()
        if not busy:
            time.sleep(1.0)  # an idle worker calls about once a second


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def main() -> int:
    ctx = multiprocessing.get_context("spawn")
    calls: multiprocessing.Queue[tuple[str, float]] = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "konductor.db")
        procs = [
            ctx.Process(target=worker, args=(db, busy, calls)) for busy in (True, False, False)
        ]
        for p in procs:
            p.start()
        seen: list[tuple[str, float]] = []
        while any(p.is_alive() for p in procs) or not calls.empty():
            try:
                seen.append(calls.get(timeout=0.2))
            except Exception:  # queue.Empty: keep waiting for the workers
                continue
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            print("a worker failed", file=sys.stderr)
            return 1
    start = min(t for _, t in seen)
    busy = [t for who, t in seen if who.startswith("busy")]
    late = [t for t in busy if t - start >= SECONDS / 2]
    print(f"{len(seen)} calls in {SECONDS:g} s by 3 processes sharing {RATE}/s")
    print(f"busiest second: {busiest_second([t for _, t in seen])} calls (bound {RATE} + {RATE})")
    print(f"the busy process, second half: {len(late) / (SECONDS / 2):.1f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
