"""A worker process for the multi-process rate-limit tests (the real API server).

It connects, prints READY and reads the start time (wall clock) from stdin.
It joins the rate limit ``--join-at`` seconds after the start, runs
``--tasks`` concurrent tasks spending from it until ``--leave-at`` seconds
after the start, and leaves. ``--busy`` tasks call as fast as the limiter
lets them; otherwise each task calls once every ``--every`` seconds. Every
call that was let through is recorded in Redis right away (the witness,
outside konductor): ``ZADD key <time> <worker>:<n>``, the time taken the
moment ``acquire`` returned (every process runs on the same machine and clock).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import redis.asyncio as redis

from konductor import Client
from konductor.store import RATELIMIT, KubernetesStore


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--rate", required=True)
    p.add_argument("--burst", type=float)
    p.add_argument("--ttl", type=float, default=3)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--busy", action="store_true")
    p.add_argument("--every", type=float, default=1.0)
    p.add_argument("--join-at", type=float, required=True)
    p.add_argument("--leave-at", type=float, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--worker", required=True)
    args = p.parse_args()

    r = redis.Redis(host="127.0.0.1", port=6379)
    store = KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    async with Client(store) as client:
        await client.store.list(RATELIMIT)  # connected, the CRD is there
        print("READY", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        join_at, leave_at = start + args.join_at, start + args.leave_at
        await asyncio.sleep(max(0.0, join_at - time.time()))
        numbers = itertools.count()
        async with client.rate_limit(
            args.name, args.rate, burst=args.burst, ttl=args.ttl
        ) as limiter:
            print("JOINED", flush=True)

            async def task() -> None:
                while True:
                    left = leave_at - time.time()
                    if left <= 0:
                        return
                    try:
                        await limiter.acquire(timeout=left)
                    except TimeoutError:
                        return
                    at = time.time()
                    await r.zadd(args.key, {f"{args.worker}:{next(numbers)}": at})
                    if not args.busy:
                        await asyncio.sleep(args.every)

            await asyncio.gather(*(task() for _ in range(args.tasks)))
    await r.aclose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
