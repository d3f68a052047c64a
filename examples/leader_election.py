"""Leader election: several candidates campaign for one Lease; one leads at a time.

Each candidate runs ``client.campaign(name, lead)``: it waits (watch-driven)
until it holds the Lease, then runs ``lead(lease)`` while it is the leader.
Here each leader does a few steps of work and then steps down (``lead``
returns, so the Lease is released), and a waiting candidate takes over at
once, with a greater fencing token (``leaseTransitions``). Run it on the
in-process memory store:

    python examples/leader_election.py

or against a cluster (the built-in ``coordination.k8s.io/v1`` Lease; no CRD needed):

    python examples/leader_election.py --kubeconfig ~/.kube/config --namespace default
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from konductor import Client, NotFound
from konductor.store import LEASE, KubernetesStore, MemoryStore, Store

NAME = "example-leader"


async def main(new_store: Callable[[], Store], candidates: int, steps: int, ttl: int) -> None:
    stores = [new_store() for _ in range(candidates)]
    with contextlib.suppress(NotFound):  # start from a fresh Lease
        await stores[0].delete(LEASE, NAME)
    clients = [Client(s, identity=f"candidate-{i}") for i, s in enumerate(stores)]
    start = time.monotonic()
    leading: list[str] = []
    terms: list[tuple[str, int]] = []
    most = 0

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:5.2f}s] {text}", flush=True)

    async def candidate(client: Client) -> None:
        async def lead(lease: Any) -> None:  # a konductor Lease
            nonlocal most
            token = lease.token  # leaseTransitions: the fencing token
            leading.append(client.identity)
            most = max(most, len(leading))
            terms.append((client.identity, token))
            say(f"{client.identity} leads (token {token})")
            try:
                for step in range(1, steps + 1):
                    await asyncio.sleep(0.2)
                    say(f"{client.identity} works: step {step}/{steps}")
            finally:
                leading.remove(client.identity)
            say(f"{client.identity} steps down")

        await client.campaign(NAME, lead, ttl=ttl)

    print(f"{candidates} candidates campaign for lease {NAME!r} (ttl {ttl}s)")
    try:
        await asyncio.gather(*(candidate(c) for c in clients))
    finally:
        for c in clients:
            await c.close()
    order = ", ".join(f"{who} (token {token})" for who, token in terms)
    print(f"leaders in order: {order}")
    print(f"never more than one leader at a time: {'yes' if most == 1 else 'NO'}")
    tokens = [t for _, t in terms]
    rising = all(a < b for a, b in itertools.pairwise(tokens))
    print(f"fencing tokens strictly increase: {'yes' if rising else 'NO'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="use this cluster instead of the memory store")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="work steps of each leader")
    parser.add_argument("--ttl", type=int, default=5, help="leaseDurationSeconds")
    args = parser.parse_args()

    async def run() -> None:
        if args.kubeconfig:

            def new_store() -> Store:
                return KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)

        else:
            memory = MemoryStore()  # one in-process "API server" shared by every candidate

            def new_store() -> Store:
                return memory

        await main(new_store, args.candidates, args.steps, args.ttl)

    asyncio.run(run())
