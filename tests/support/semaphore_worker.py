"""A worker process for the multi-process semaphore tests, on either shared store.

The store is ``--db PATH`` (a LocalStore file) or ``--kubeconfig`` plus
``--namespace`` (the real API server). Runs TASKS concurrent tasks, each
acquiring the semaphore ROUNDS times; inside,
a Redis counter (a witness independent of konductor) records how many holders
are inside at once. With ``--hold-forever`` it acquires once, prints HELD and
blocks (to be SIGKILLed by the test).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import redis.asyncio as redis

from konductor import Client
from konductor.store import KubernetesStore, LocalStore, Store
from tests.support.witness import ENTER


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig")
    p.add_argument("--namespace")
    p.add_argument("--db")
    p.add_argument("--name", required=True)
    p.add_argument("--permits", type=int, default=3)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--ttl", type=float, default=10)
    p.add_argument("--key", default="witness")
    p.add_argument("--hold-forever", action="store_true")
    args = p.parse_args()

    store: Store = (
        LocalStore(args.db)
        if args.db
        else KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    )
    async with Client(store) as client:
        if args.hold_forever:
            await client.acquire_semaphore(args.name, permits=args.permits, ttl=args.ttl)
            print("HELD", flush=True)
            await asyncio.Event().wait()
        r = redis.Redis(host="127.0.0.1", port=6379)
        inside, peak, total = f"{args.key}:inside", f"{args.key}:max", f"{args.key}:total"
        enter = r.register_script(ENTER)

        async def task() -> None:
            for _ in range(args.rounds):
                async with client.semaphore(
                    args.name, permits=args.permits, ttl=args.ttl, timeout=300
                ):
                    await enter(keys=[inside, peak, total])
                    await asyncio.sleep(0.01)
                    await r.decr(inside)

        await asyncio.gather(*(task() for _ in range(args.tasks)))
        await r.aclose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
