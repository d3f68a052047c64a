"""A cluster-wide barrier: workers start their real work only once all are ready.

Each worker prepares for a different time (loading data, warming a cache),
arrives at the barrier and waits; the barrier opens when the last one arrives,
and every worker passes together. Each worker has its own Client (in a real
deployment: its own pod). Run it on the in-process memory store:

    python examples/barrier.py

or against a cluster (after the CRDs were installed there):

    python examples/barrier.py --kubeconfig ~/.kube/config --namespace default
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from konductor import Client, NotFound
from konductor.store import BARRIER, KubernetesStore, MemoryStore, Store

NAME = "example-start-line"


async def worker(index: int, client: Client, workers: int, log: list[tuple[str, float]]) -> None:
    await asyncio.sleep(random.uniform(0.05, 0.5))  # preparing
    log.append(("arrive", time.monotonic()))
    info = await client.arrive_and_wait(NAME, expected=workers, party=f"worker-{index}", timeout=60)
    log.append(("pass", time.monotonic()))
    print(f"worker-{index} passed ({info.arrived_count} of {info.expected} arrived)")


async def main(new_store: Callable[[], Store], workers: int) -> None:
    async with new_store() as admin:
        with contextlib.suppress(NotFound):
            await admin.delete(BARRIER, NAME)  # a barrier stays open: start afresh
    clients = [Client(new_store()) for _ in range(workers)]
    log: list[tuple[str, float]] = []
    try:
        await asyncio.gather(*(worker(i, c, workers, log) for i, c in enumerate(clients)))
        status = await clients[0].barrier_status(NAME)
    finally:
        for c in clients:
            await c.close()
    last_arrival = max(t for what, t in log if what == "arrive")
    first_pass = min(t for what, t in log if what == "pass")
    assert first_pass >= last_arrival, "a worker passed before the last one arrived"
    print(f"barrier {NAME!r}: open={status.open}, arrived {status.arrived_count}/{status.expected}")
    print(f"all {workers} workers passed together, none before the last arrival")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="use this cluster instead of the memory store")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--workers", type=int, default=5)
    args = parser.parse_args()

    if args.kubeconfig:

        def new_store() -> Store:
            return KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)

    else:
        memory = MemoryStore()  # one in-process "API server" that every worker shares

        def new_store() -> Store:
            return memory

    asyncio.run(main(new_store, args.workers))
