"""Five replicas start together; the database migration runs exactly once.

Each "replica" is its own client (on a cluster: its own pod). All call
``client.once("migrate-db", migrate)``: one runs it, the others wait and
continue when it is done. Then a flaky cache warm-up fails on its first run:
the replicas that waited for it see ``OnceFailed``, and the next caller runs
it again.

Runs on the in-process memory store by default:

    python examples/run_once.py

With a cluster (konductor's CRDs installed) or the local store, set
KONDUCTOR_STORE (kubernetes, local, local:/path/to.db) and optionally
KONDUCTOR_NAMESPACE, then run the same command.
"""

from __future__ import annotations

import asyncio
import os

from konductor import Client, MemoryStore, OnceFailed

REPLICAS = 5


async def main() -> int:
    shared = None if os.environ.get("KONDUCTOR_STORE") else MemoryStore()
    clients = [Client(shared) for _ in range(REPLICAS)]
    migrations = 0
    warmups = 0

    async def migrate() -> str:
        nonlocal migrations
        migrations += 1
        await asyncio.sleep(0.3)  # ALTER TABLE ...
        return "schema v42"

    async def warm_cache() -> None:
        nonlocal warmups
        warmups += 1
        await asyncio.sleep(0.3)
        if warmups == 1:
            raise ConnectionError("cache not reachable yet")

    async def replica(n: int, client: Client) -> None:
        result = await client.once("migrate-db", migrate, ttl=10, timeout=60)
        role = f"ran the migration -> {result}" if result else "waited for the migration"
        print(f"replica {n}: {role}")

    async def warm(n: int, client: Client) -> None:
        try:
            await client.once("warm-cache", warm_cache, ttl=10, timeout=60)
        except OnceFailed as exc:
            print(f"replica {n}: the warm-up it waited for failed: {exc.error}")
        except ConnectionError as exc:
            print(f"replica {n}: ran the warm-up, which failed: {exc!r}")

    try:
        for name in ("migrate-db", "warm-cache"):  # start the demo afresh on a real store
            await clients[0].reset_once(name, force=True)
        await asyncio.gather(*(replica(n, c) for n, c in enumerate(clients)))
        status = await clients[0].once_status("migrate-db")
        print(f"migrate-db: {status.state} (attempt {status.attempt}); ran {migrations} time(s)")

        await asyncio.gather(*(warm(n, c) for n, c in enumerate(clients)))
        status = await clients[0].once_status("warm-cache")
        print(f"warm-cache: {status.state}: {status.error}")
        await clients[0].once("warm-cache", warm_cache)  # the next caller retries
        status = await clients[0].once_status("warm-cache")
        print(f"warm-cache: {status.state} after {warmups} runs (attempt {status.attempt})")
    finally:
        for c in clients:
            await c.close()
    return migrations


if __name__ == "__main__":
    asyncio.run(main())
