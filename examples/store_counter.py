"""Compare-and-swap on konductor's store: many writers, no lost update.

Every konductor primitive is built on this one operation: a write that only
succeeds if the object is still at the version the writer read. Run it on the
in-process memory store:

    python examples/store_counter.py

or against a cluster (after `konductor install` put the CRDs there):

    python examples/store_counter.py --kubeconfig ~/.kube/config --namespace default
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from konductor import Conflict, NotFound
from konductor.store import SEMAPHORE, KubernetesStore, MemoryStore, Store


async def increment(store: Store, name: str, times: int) -> int:
    """Add one to ``status.counter`` ``times`` times; return how often the CAS lost."""
    lost = 0
    for _ in range(times):
        while True:
            obj = await store.get(SEMAPHORE, name)
            counter = obj.status.get("counter", 0)
            try:
                await store.replace_status(
                    SEMAPHORE, name, {"counter": counter + 1}, version=obj.version
                )
                break
            except Conflict:
                lost += 1  # someone else wrote first: read again and retry
    return lost


async def main(store: Store, writers: int, times: int) -> int:
    name = "example-counter"
    with contextlib.suppress(NotFound):
        await store.delete(SEMAPHORE, name)
    await store.create(SEMAPHORE, name, {"permits": 1})
    lost = await asyncio.gather(*(increment(store, name, times) for _ in range(writers)))
    final = (await store.get(SEMAPHORE, name)).status["counter"]
    print(f"{writers} writers x {times} increments -> counter = {final}")
    print(f"compare-and-swap conflicts retried: {sum(lost)}")
    await store.delete(SEMAPHORE, name)
    return int(final)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="use this cluster instead of the memory store")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args()

    async def run() -> None:
        store: Store = (
            KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
            if args.kubeconfig
            else MemoryStore()
        )
        async with store:
            await main(store, args.writers, args.times)

    asyncio.run(run())
