"""One worker process of the multi-process contention benchmark (benchmarks/contention.py).

Each worker is its own OS process with its own client on its own
``KubernetesStore`` (its own connection pool), like one pod of a fleet. It:

1. opens its store and reads the semaphore once (connection set-up happens
   before the measured window), then prints ``READY``;
2. waits for ``GO <start> <deadline>`` on stdin (two ``CLOCK_MONOTONIC`` times,
   which is system-wide on Linux, so every worker starts at the same instant and
   startup cost is not measured), sleeps until ``start``;
3. loops one task, acquire -> hold -> release, until ``deadline``. An acquire
   still waiting at the deadline is given up (konductor: its ``timeout``;
   baseline: cancelled), and not counted as a grant;
4. writes one JSON document to ``--out``: every grant's (requested, granted)
   monotonic times, its own CPU seconds from start to deadline, the client-side
   request counts, timeouts and errors by class name.

Inside each hold a Redis counter at 127.0.0.1:6379 (a witness independent of
konductor) records how many holders are inside at once and the maximum seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from _baseline import PollingSemaphore
from _counting import CountingStore

from konductor import AcquireTimeout, Client, KonductorError
from konductor.store import SEMAPHORE

# KEYS: inside, max, total. Atomically: one more inside, raise the max if passed.
ENTER = """
local v = redis.call('INCR', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if v > m then redis.call('SET', KEYS[2], v) end
redis.call('INCR', KEYS[3])
return v
"""


async def run(args: argparse.Namespace) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    store = CountingStore(args.namespace, kubeconfig=args.kubeconfig)
    r = redis.Redis(host="127.0.0.1", port=6379)
    enter = r.register_script(ENTER)
    inside, peak, total = f"{args.key}:inside", f"{args.key}:max", f"{args.key}:total"
    grants: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    timeouts = 0
    async with Client(store) as client:
        baseline = PollingSemaphore(store, args.name, permits=args.permits)
        await store.get(SEMAPHORE, args.name)  # connection set-up, outside the window
        await r.ping()
        print("READY", flush=True)
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] != "GO":
            return None
        start, deadline = float(line[1]), float(line[2])
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0, counts0 = time.process_time(), store.snapshot()
        # CPU used inside the window only (not the drain after it): read at the deadline.
        cpu_at_deadline: list[float] = []
        loop.call_later(
            max(0.0, deadline - time.monotonic()),
            lambda: cpu_at_deadline.append(time.process_time()),
        )

        async def acquire(remaining: float) -> Callable[[], Awaitable[None]]:
            if args.mode == "konductor":
                permit = await client.acquire_semaphore(
                    args.name, permits=args.permits, timeout=remaining
                )
                return permit.release
            holder_id = await asyncio.wait_for(baseline.acquire(), remaining)
            return lambda: baseline.release(holder_id)

        while (asked := time.monotonic()) < deadline:
            try:
                release = await acquire(deadline - asked)
            except (AcquireTimeout, TimeoutError):
                timeouts += 1
                break
            except KonductorError as err:  # counted and shown, not hidden
                errors[type(err).__name__] += 1
                continue
            granted = time.monotonic()
            grants.append((asked, granted))
            await enter(keys=[inside, peak, total])
            try:
                await asyncio.sleep(args.hold)
            finally:
                await r.decr(inside)
                try:
                    await release()
                except KonductorError as err:
                    errors[f"release:{type(err).__name__}"] += 1
        cpu = (cpu_at_deadline[0] if cpu_at_deadline else time.process_time()) - cpu0
        counts = store.snapshot() - counts0
    await r.aclose()
    return {
        "grants": grants,
        "timeouts": timeouts,
        "errors": dict(errors),
        "cpu": cpu,
        "client": asdict(counts),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mode", choices=("konductor", "baseline"), required=True)
    p.add_argument("--permits", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    doc = asyncio.run(run(args))
    if doc is not None:
        Path(args.out).write_text(json.dumps(doc))


if __name__ == "__main__":
    main()
