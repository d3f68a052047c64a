"""Twelve jobs, three permits: a cluster-wide semaphore in action.

Runs on the in-process memory store by default:

    python examples/semaphore.py

With a cluster (konductor's CRDs installed) or the local store, set
KONDUCTOR_STORE (kubernetes, local, local:/path/to.db) and optionally
KONDUCTOR_NAMESPACE, then run the same command.
"""

from __future__ import annotations

import asyncio
import os
import time

from konductor import Client, MemoryStore


async def main() -> int:
    store = None if os.environ.get("KONDUCTOR_STORE") else MemoryStore()
    inside = peak = 0
    start = time.monotonic()
    async with Client(store) as client:

        async def job(n: int) -> None:
            nonlocal inside, peak
            async with client.semaphore("example-jobs", permits=3, ttl=10) as permit:
                inside += 1
                peak = max(peak, inside)
                print(
                    f"{time.monotonic() - start:5.2f}s job {n:2d} runs  "
                    f"(token {permit.token:2d}, {inside}/3 inside)"
                )
                await asyncio.sleep(0.1)
                inside -= 1

        await asyncio.gather(*(job(n) for n in range(12)))
    print(f"12 jobs done; at most {peak} ran at once")
    return peak


if __name__ == "__main__":
    asyncio.run(main())
