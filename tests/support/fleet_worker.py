"""A worker process for the fleet semaphore test (tests/primitives/test_semaphore_fleet.py).

One OS process, its own ``Client`` on its own ``KubernetesStore``, one task: it
reads the semaphore once (connected), prints ``READY``, waits for ``GO`` on
stdin so that every worker starts together, then ROUNDS times acquires, holds
HOLD seconds and releases. Inside each hold a Redis counter (a witness
independent of konductor) records how many holders are inside at once, the
maximum seen and the total of holds. Prints ``DONE`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import redis.asyncio as redis

from konductor import Client
from konductor.store import SEMAPHORE, KubernetesStore
from tests.support.witness import ENTER


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--permits", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    store = KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    r = redis.Redis(host="127.0.0.1", port=6379)
    enter = r.register_script(ENTER)
    inside, peak, total = f"{args.key}:inside", f"{args.key}:max", f"{args.key}:total"
    async with Client(store) as client:
        await store.get(SEMAPHORE, args.name)
        await r.ping()
        print("READY", flush=True)
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "GO":
            return
        for _ in range(args.rounds):
            async with client.semaphore(args.name, permits=args.permits, timeout=120):
                await enter(keys=[inside, peak, total])
                await asyncio.sleep(args.hold)
                await r.decr(inside)
    await r.aclose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
