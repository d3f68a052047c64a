"""A worker process for the multi-process once tests.

Prints ``READY <identity>`` once connected, then waits for a line on stdin
(``GO``) so that every process starts calling at the same moment. Then, for
each of NAMES once objects, TASKS concurrent tasks call ``client.once``; the
function records its start and its completion in Redis (a witness outside
konductor) and each caller records whether it called before the run ended.
With ``--hang`` the function records its start, prints ``STARTED`` and blocks
forever (to be SIGKILLed by the test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import redis.asyncio as redis

from konductor import Client
from konductor.store import KubernetesStore


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--prefix", default="init")
    p.add_argument("--names", type=int, default=1)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--work", type=float, default=1.0)
    p.add_argument("--ttl", type=float, default=10)
    p.add_argument("--key", required=True)
    p.add_argument("--hang", action="store_true")
    args = p.parse_args()

    r = redis.Redis(host="127.0.0.1", port=6379)
    store = KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    async with Client(store) as client:
        print(f"READY {client.identity}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        ran = waited = 0
        fn_started: dict[str, float] = {}
        for i in range(args.names):
            name = f"{args.prefix}-{i}"
            key = f"{args.key}:{name}"

            async def fn(key: str = key, name: str = name) -> str:
                fn_started[name] = time.monotonic()
                await r.incr(f"{key}:starts")
                if args.hang:
                    print("STARTED", flush=True)
                    await asyncio.Event().wait()
                await asyncio.sleep(args.work)
                await r.incr(f"{key}:done")
                return "ran"

            async def call(name: str = name, key: str = key) -> tuple[str | None, float, int]:
                if int(await r.get(f"{key}:done") or 0) == 0:
                    await r.sadd(f"{key}:early", os.getpid())
                called = time.monotonic()
                result = await client.once(name, fn, ttl=args.ttl, timeout=300)
                done = int(await r.get(f"{key}:done") or 0)
                return result, called, done

            outcomes = await asyncio.gather(*(call() for _ in range(args.tasks)))
            for result, called, done in outcomes:
                if result == "ran":
                    ran += 1
                    # time.monotonic() is one system-wide clock on Linux: the test
                    # compares these with its own readings.
                    print(f"RAN {name} {called:.3f} {fn_started[name]:.3f}", flush=True)
                else:
                    waited += 1
                if done != 1:  # nobody may return before the run completed
                    print(f"EARLY {name} done={done}", flush=True)
        await r.aclose()
    print(f"DONE ran={ran} waited={waited}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
