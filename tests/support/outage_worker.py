"""A worker process for the control-plane outage test: contend until told to stop.

Runs TASKS concurrent tasks, each acquiring the semaphore again and again and
holding it for a random 0.2-1.0 s (one hold in four: 3-6 s, longer than the
holder's own deadline, so that an outage cuts some holders off inside their
bodies), until the Redis key ``KEY:stop`` exists. A
Redis counter (a witness independent of konductor) records how many holders
are inside at once: incremented on entry, decremented when the body ends or is
cancelled (a lost grant cancels it). Lost grants and errors are counted, never
fatal: the point is to keep contending through every outage and recover.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys

import redis.asyncio as redis

from konductor import Client, KonductorError, LostError
from konductor.store import KubernetesStore
from tests.support.witness import ENTER


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--permits", type=int, required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--ttl", type=float, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--proc", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    r = redis.Redis(host="127.0.0.1", port=6379)
    k = args.key
    enter = r.register_script(ENTER)
    keys = [f"{k}:inside", f"{k}:max", f"{k}:total", f"{k}:proc:{args.proc}"]

    async with Client(KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)) as client:

        async def task() -> None:
            while not await r.exists(f"{k}:stop"):
                try:
                    async with client.semaphore(
                        args.name, permits=args.permits, ttl=args.ttl, timeout=120
                    ):
                        await enter(keys=keys)
                        try:
                            long = random.random() < 0.25
                            await asyncio.sleep(
                                random.uniform(3, 6) if long else random.uniform(0.2, 1)
                            )
                        finally:
                            await r.decr(f"{k}:inside")
                except LostError:
                    await r.incr(f"{k}:lost")
                except KonductorError as exc:
                    await r.incr(f"{k}:errors")
                    print(f"{args.proc}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(task() for _ in range(args.tasks)))
    await r.aclose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
