"""Benchmark: what a cluster-wide rate limit costs the control plane, counted by the apiserver.

Run from the repository root::

    .venv/bin/python benchmarks/ratelimit.py             # 1 and 4 processes, ~1 min
    .venv/bin/python benchmarks/ratelimit.py --quick     # a smoke run, seconds
    .venv/bin/python benchmarks/ratelimit.py --kubeconfig PATH   # an existing cluster

For each number of OS processes (each its own client, like pods of a fleet),
and for konductor and a hand-built baseline in the same run, on fresh objects:

* N worker processes (benchmarks/_ratelimit_worker.py) start at one instant and
  call as fast as a limit of ``--rate`` calls per second lets them, for
  ``--seconds`` (konductor's members with ``--ttl``, renewing every ttl/3);
* **konductor**: ``client.rate_limit(name, rate=...)`` (joined inside the window:
  the join is counted) and ``await limiter.acquire()`` per call: each process
  spends a share of the rate from a local token bucket and writes only its
  membership, on the renewal cadence;
* **baseline**: what one builds by hand on the Kubernetes API without konductor
  (the Redis-token-bucket habit moved to the API server): a fixed one-second
  window counter in the object's status, each call a GET and a
  compare-and-swap PUT (retried on 409);
* requests are counted by the apiserver's own ``/metrics``
  (``apiserver_request_total`` for the ``ratelimits`` resource, konductor, and
  the ``semaphores`` resource, the baseline's object; every verb including
  WATCH), scraped before the workers start and after they all exited and their
  watches ended;
* the calls' wall-clock times give the busiest one-second window (a safety
  cross-check: konductor's bound is ``burst + rate``).

The figure to read is **API requests per 1,000 calls**, and its
konductor/baseline ratio (below 1: konductor is cheaper). Progress goes to
stderr, the table to stdout (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from contention import Metrics, ServerCounts, environment, spawn_worker
from semaphore import create_namespace, progress

from konductor.store import RATELIMIT, SEMAPHORE, KubernetesStore

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_ratelimit_worker.py"
MODES = ("konductor", "baseline")
RESOURCE = {"konductor": "ratelimits", "baseline": "semaphores"}


@dataclass
class Row:
    mode: str
    processes: int
    rate: int
    seconds: float
    calls: int = 0
    server: ServerCounts = field(default_factory=ServerCounts)
    peak_window: int = 0
    errors: int = 0

    @property
    def per_1000(self) -> float:
        return self.server.requests * 1000 / self.calls if self.calls else float("nan")


def peak_one_second(times: list[float]) -> int:
    """The most calls in any one-second window [t, t + 1) starting at a call."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


async def row(
    args: argparse.Namespace, kubeconfig: str, ns: str, mode: str, processes: int, tmp: Path
) -> Row:
    rate, seconds, ttl = args.rate, args.seconds, args.ttl
    name = f"{mode[:4]}-{processes}-{uuid.uuid4().hex[:6]}"
    async with KubernetesStore(ns, kubeconfig=kubeconfig) as admin:
        if mode == "konductor":
            await admin.create(RATELIMIT, name, {"rate": rate})
        else:
            await admin.create(SEMAPHORE, name, {"permits": 1})
    metrics = Metrics(kubeconfig, resource=RESOURCE[mode])
    before = await metrics.scrape()
    workers: list[tuple[subprocess.Popen[str], Path]] = []
    for i in range(processes):
        out = tmp / f"{name}-{i}.json"
        worker_args = [
            *("--kubeconfig", kubeconfig, "--namespace", ns, "--name", name),
            *("--mode", mode, "--rate", str(rate), "--ttl", str(ttl), "--out", str(out)),
        ]
        proc = await asyncio.to_thread(spawn_worker, worker_args, tmp / f"{name}-{i}.log", WORKER)
        workers.append((proc, out))
    for proc, _ in workers:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError(f"a {mode} worker did not start: {line!r} (see {tmp})")
    start = time.monotonic() + 0.5
    for proc, _ in workers:
        assert proc.stdin is not None
        proc.stdin.write(f"GO {start} {start + seconds}\n")
        proc.stdin.flush()
    result = Row(mode, processes, rate, seconds)
    times: list[float] = []
    for proc, out in workers:
        code = await asyncio.to_thread(proc.wait, seconds + 120)
        if code != 0:
            raise RuntimeError(f"a {mode} worker exited with {code} (see {tmp})")
        doc = json.loads(out.read_text())
        times.extend(doc["calls"])
        result.errors += sum(doc["errors"].values())
    for _ in range(100):  # a watch is counted by the server when it ends
        if await metrics.open_watches() == 0:
            break
        await asyncio.sleep(0.1)
    result.server = await metrics.scrape() - before
    result.calls = len(times)
    result.peak_window = peak_one_second(times)
    return result


def render(rows: list[Row]) -> list[str]:
    headers = (
        "processes",
        "limiter",
        "rate/s",
        "calls",
        "calls/s",
        "API requests",
        "requests/1000 calls",
        "409 conflicts",
        "busiest 1 s",
        "errors",
    )
    cells = [
        (
            str(r.processes),
            r.mode,
            str(r.rate),
            str(r.calls),
            f"{r.calls / r.seconds:.1f}",
            str(r.server.requests),
            f"{r.per_1000:.2f}",
            str(r.server.conflicts),
            str(r.peak_window),
            str(r.errors),
        )
        for r in rows
    ]
    out = _table(headers, cells)
    out += ["", "konductor / baseline (below 1: konductor cheaper)", ""]
    pairs = []
    for k in (r for r in rows if r.mode == "konductor"):
        b = next((r for r in rows if r.mode == "baseline" and r.processes == k.processes), None)
        if b is not None:
            ratio = k.per_1000 / b.per_1000 if b.per_1000 else float("nan")
            pairs.append((str(k.processes), f"{ratio:.4f}"))
    out += _table(("processes", "requests/1000 calls"), pairs)
    return out


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]


async def bench(args: argparse.Namespace, kubeconfig: str, tmp: Path) -> list[Row]:
    from konductor.manifests import install_crds

    ns = f"bench-{uuid.uuid4().hex[:8]}"
    async with KubernetesStore(ns, kubeconfig=kubeconfig) as admin:
        await install_crds(admin)
    await create_namespace(kubeconfig, ns)
    rows: list[Row] = []
    try:
        for processes in args.processes:
            for mode in MODES:
                progress(f"{mode}: {processes} process(es) at {args.rate}/s for {args.seconds:g} s")
                rows.append(await row(args, kubeconfig, ns, mode, processes, tmp))
    finally:
        with contextlib.suppress(Exception):
            await create_namespace(kubeconfig, ns, delete=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1,2 processes, 3 s")
    p.add_argument("--kubeconfig", help="benchmark on this cluster (admin) instead of a local one")
    p.add_argument("--processes", help="comma-separated, default 1,4")
    p.add_argument("--rate", type=int, help="calls per second, default 100")
    p.add_argument("--seconds", type=float, help="window per row, default 30")
    p.add_argument("--ttl", type=float, help="the members' TTL, default 15 (the library's)")
    args = p.parse_args(argv)
    default = ("1,2", 50, 3.0, 3.0) if args.quick else ("1,4", 100, 30.0, 15.0)
    args.ttl = args.ttl or default[3]
    args.processes = [int(x) for x in (args.processes or default[0]).split(",") if x.strip()]
    args.rate = args.rate or default[1]
    args.seconds = args.seconds or default[2]
    started = time.monotonic()
    with (
        environment(args.kubeconfig) as (kubeconfig, where, _pids),
        tempfile.TemporaryDirectory(prefix="konductor-ratelimit-") as tmp,
    ):
        rows = asyncio.run(bench(args, kubeconfig, Path(tmp)))
    print(
        f"one rate limit of {args.rate}/s (members' TTL {args.ttl:g} s), N OS processes each "
        "calling as fast as it lets them; konductor and a hand-built fixed-window counter in "
        "the same run"
    )
    print()
    for line in render(rows):
        print(line)
    print()
    print(f"* server: {where}; {args.seconds:g} s per row; took {time.monotonic() - started:.0f} s")
    if args.quick:
        print("* QUICK sizes: a smoke run, not a measurement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
