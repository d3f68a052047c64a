"""A worker process for the fleet semaphore test (tests/primitives/test_semaphore_fleet.py).

One OS process, its own ``Client`` on its own ``KubernetesStore``, one task: it
reads the semaphore once (connected), prints ``READY``, waits for ``GO`` on
stdin so that every worker starts together, then ROUNDS times acquires, holds
HOLD seconds and releases. Inside each hold a Redis counter (a witness
independent of konductor) records how many holders are inside at once, the
maximum seen and the total of holds. Prints ``DONE`` at the end.

``--cas`` makes the worker write by compare-and-swap of the whole status only
(its store refuses patches as a Role without ``patch`` does, and the client
falls back), as konductor did before guarded patches: a fleet in the middle of
an upgrade, or with an old Role. ``--priority`` is the priority it queues with.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis

from konductor import Client, Forbidden
from konductor.store import SEMAPHORE, Kind, KubernetesStore, StoredObject
from tests.support.witness import ENTER


class CasOnlyStore(KubernetesStore):
    """A Kubernetes store that may not patch: every write is a compare-and-swap."""

    async def patch_status(
        self, kind: Kind, name: str, ops: Sequence[dict[str, Any]], **kw: Any
    ) -> StoredObject:
        raise Forbidden("patch refused (test: a writer by compare-and-swap only)")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--permits", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--cas", action="store_true")
    p.add_argument("--priority", type=int, default=0)
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    kind = CasOnlyStore if args.cas else KubernetesStore
    store = kind(args.namespace, kubeconfig=args.kubeconfig)
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
            async with client.semaphore(
                args.name, permits=args.permits, timeout=120, priority=args.priority
            ):
                await enter(keys=[inside, peak, total])
                await asyncio.sleep(args.hold)
                await r.decr(inside)
    await r.aclose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
