"""One worker process of the rate-limit cost benchmark (benchmarks/ratelimit.py).

Each worker is its own OS process with its own client on its own
``KubernetesStore``, like one pod of a fleet. It:

1. opens its store and reads the object once (connection set-up happens
   before the measured window), then prints ``READY``;
2. waits for ``GO <start> <deadline>`` on stdin (two ``CLOCK_MONOTONIC`` times,
   system-wide on Linux), sleeps until ``start``;
3. calls as fast as the limiter lets it until ``deadline``:

   - ``konductor``: ``client.rate_limit(name, rate=...)`` joined inside the
     window (the join is part of the cost), then ``await limiter.acquire()``
     per call;
   - ``baseline``: what a user builds by hand on the Kubernetes API without
     konductor: a fixed one-second window counter in the object's status,
     each call a GET and a compare-and-swap PUT of ``count + 1`` (retried on
     409), sleeping to the next second when the window is full;

4. writes one JSON document to ``--out``: the wall-clock time of every call
   (for the driver's sliding-window check) and errors by class name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from konductor import Client, Conflict, KonductorError, KubernetesStore
from konductor.store import RATELIMIT, SEMAPHORE


async def baseline_call(store: KubernetesStore, name: str, rate: int) -> None:
    """One call through the hand-built fixed-window counter (GET + CAS PUT per call)."""
    while True:
        obj = await store.get(SEMAPHORE, name)
        window = int(time.time())
        counter = obj.status.get("pollWindow") or {}
        count = counter.get("count", 0) if counter.get("window") == window else 0
        if count >= rate:
            await asyncio.sleep(max(0.0, window + 1 - time.time()))
            continue
        status = {**obj.status, "pollWindow": {"window": window, "count": count + 1}}
        try:
            await store.replace_status(SEMAPHORE, name, status, version=obj.version)
        except Conflict:
            continue
        return


async def run(args: argparse.Namespace) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    store = KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    calls: list[float] = []
    errors: Counter[str] = Counter()
    async with Client(store) as client:
        await store.get(RATELIMIT if args.mode == "konductor" else SEMAPHORE, args.name)
        print("READY", flush=True)
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] != "GO":
            return None
        start, deadline = float(line[1]), float(line[2])
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        if args.mode == "konductor":
            async with client.rate_limit(args.name, rate=args.rate, ttl=args.ttl) as limiter:
                while (now := time.monotonic()) < deadline:
                    try:
                        await limiter.acquire(timeout=deadline - now)
                    except TimeoutError:
                        break
                    except KonductorError as err:  # counted and shown, not hidden
                        errors[type(err).__name__] += 1
                        continue
                    calls.append(time.time())
        else:
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(
                        baseline_call(store, args.name, args.rate), deadline - time.monotonic()
                    )
                except TimeoutError:
                    break
                except KonductorError as err:
                    errors[type(err).__name__] += 1
                    continue
                calls.append(time.time())
    return {"calls": calls, "errors": dict(errors)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mode", choices=("konductor", "baseline"), required=True)
    p.add_argument("--rate", type=int, required=True)
    p.add_argument("--ttl", type=float, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    doc = asyncio.run(run(args))
    if doc is not None:
        Path(args.out).write_text(json.dumps(doc))


if __name__ == "__main__":
    main()
