"""Decorators: hold a cluster-wide grant while a function runs, sync or async.

    python examples/decorators.py

Uses the in-process memory store unless KONDUCTOR_STORE is set (kubernetes,
local, local:/path/to.db). Sync functions run through the process's
SyncClient, whose background loop keeps renewing while they block.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import konductor
from konductor import MemoryStore, with_mutex, with_semaphore

if not os.environ.get("KONDUCTOR_STORE"):
    konductor.configure(store=MemoryStore)  # a factory: one store per loop / process

inside = peak = 0
guard = threading.Lock()


@with_semaphore("example-exports", permits=2, ttl=10, timeout=60)
def export(n: int) -> str:
    """A blocking batch step: at most two run at once, cluster-wide."""
    global inside, peak
    with guard:
        inside += 1
        peak = max(peak, inside)
    time.sleep(0.1)
    with guard:
        inside -= 1
    return f"export {n} done"


class Reports:
    @with_mutex("example-report")
    async def build(self, name: str) -> str:
        await asyncio.sleep(0.05)
        return f"report {name} built"

    @with_mutex("example-report")
    @classmethod
    async def rebuild_all(cls) -> str:
        return "all reports rebuilt"


def main() -> None:
    threads = [threading.Thread(target=lambda n=n: print(export(n))) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"at most {peak} exports ran at once")

    async def reports() -> None:
        print(await Reports().build("weekly"))
        print(await Reports.rebuild_all())

    asyncio.run(reports())


if __name__ == "__main__":
    main()
