"""What observation costs per grant: uncontended acquire + release on the memory store.

The memory store makes no API request, so the hooks, metrics and spans are
all that differ between the modes (on a Kubernetes store each grant also costs
two API writes of 10-50 ms, which dwarf them). Each mode runs in a process of
its own (instrumentation is process-wide), a few rounds on fresh clients; the
minimum and median per acquire + release are printed.

    .venv/bin/python benchmarks/observability.py [--rounds 9] [--grants 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

MODES = ("none", "metrics", "tracing", "both")


async def measure(mode: str, rounds: int, grants: int) -> list[float]:
    if mode in ("metrics", "both"):
        from prometheus_client import CollectorRegistry

        import konductor.metrics

        konductor.metrics.instrument(CollectorRegistry())
    if mode in ("tracing", "both"):
        from opentelemetry.sdk.trace import TracerProvider

        import konductor.tracing

        konductor.tracing.instrument(TracerProvider())  # an SDK provider, no exporter
    from konductor.testing import memory_client

    per_grant = []
    for _ in range(rounds):
        async with memory_client() as client:
            for _ in range(50):  # warm-up
                async with client.semaphore("bench", permits=1):
                    pass
            start = time.perf_counter()
            for _ in range(grants):
                async with client.semaphore("bench", permits=1):
                    pass
            per_grant.append((time.perf_counter() - start) / grants * 1e6)
    return per_grant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--grants", type=int, default=300)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        runs = asyncio.run(measure(args.mode, args.rounds, args.grants))
        print(f"{args.mode:8s} min {min(runs):6.0f} us   median {statistics.median(runs):6.0f} us")
        return
    print("per uncontended acquire + release, memory store:")
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--rounds", str(args.rounds)]
        subprocess.run([*cmd, "--grants", str(args.grants)], check=True)


if __name__ == "__main__":
    main()
