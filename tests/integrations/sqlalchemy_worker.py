"""A worker process ("a pod") for the CoordinatedEngine tests.

It builds a CoordinatedEngine (or, with ``--async``, an AsyncCoordinatedEngine
on asyncpg) on the real API server (a KubernetesStore factory from
``--kubeconfig`` / ``--namespace``) and PostgreSQL, with every connection
tagged ``application_name=--app`` so that the test can count them in
``pg_stat_activity``. It then waits for ``--go`` (a file) to exist and runs
``--workers`` threads (tasks) of ``--queries`` queries each, more than its pool
holds, so the pool is saturated. With ``--until`` it runs until that file
exists instead. It prints ``START`` as its workload starts, every change of
the permits it holds as ``HELD n``, and at the end ``DONE <queries>``.
``--no-rebalance`` builds the engine with ``rebalance=False``.

``--fork N``: the sync engine is first used in this process, then N forked
children (multiprocessing's fork context) each run the workload on the same
engine object and exit without disposing; the parent then checks that its own
connection still works and prints what the semaphore holds (``AFTER``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from konductor.integrations.sqlalchemy import AsyncCoordinatedEngine, CoordinatedEngine
from konductor.store import SEMAPHORE, KubernetesStore

PG = "postgresql+{driver}://postgres@127.0.0.1:5432/test"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--semaphore", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--cap", type=int, default=8)
    p.add_argument("--pool-size", type=int, default=5)
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--ttl", type=float, default=15)
    p.add_argument("--grow-interval", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--sleep", type=float, default=0.05)
    p.add_argument("--go", default="")
    p.add_argument("--until", default="")
    p.add_argument("--no-dispose", action="store_true")
    p.add_argument("--fork", type=int, default=0)
    p.add_argument("--async", dest="use_async", action="store_true")
    p.add_argument("--no-rebalance", dest="rebalance", action="store_false", default=None)
    return p.parse_args()


def say(*parts: object) -> None:
    print(*parts, flush=True)


def wait_for(path: str) -> None:
    while path and not Path(path).exists():
        time.sleep(0.05)


def watch_held(get: Callable[[], int], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        last = -1
        while not stop.is_set():
            held = get()
            if held != last:
                say("HELD", held)
                last = held
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def store_factory(args: argparse.Namespace) -> Callable[[], KubernetesStore]:
    return lambda: KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)


def keep_going(args: argparse.Namespace, done: int) -> bool:
    if args.until:
        return not Path(args.until).exists()
    return done < args.queries


# --- sync ------------------------------------------------------------------------------


def sync_engine(args: argparse.Namespace) -> CoordinatedEngine:
    return CoordinatedEngine(
        PG.format(driver="psycopg"),
        semaphore=args.semaphore,
        max_connections=args.cap,
        pool_size=args.pool_size,
        min_connections=args.min,
        ttl=args.ttl,
        grow_interval=args.grow_interval,
        rebalance=args.rebalance,
        reserve_timeout=600,
        store=store_factory(args),
        pool_timeout=600,
        connect_args={"application_name": args.app},
    )


def sync_workload(engine: CoordinatedEngine, args: argparse.Namespace) -> int:
    count = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal count
        done = 0
        while keep_going(args, done):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1 FROM pg_sleep(:s)"), {"s": args.sleep}).scalar()
            done += 1
        with lock:
            count += done

    threads = [threading.Thread(target=work) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count


def child(engine: CoordinatedEngine, args: argparse.Namespace) -> None:
    # A forked worker using the engine its parent built (and already used).
    done = sync_workload(engine, args)
    say("CHILD", os.getpid(), "held", engine.held, "done", done)
    # No dispose: the reservation is given back as the child exits.


def semaphore_state(args: argparse.Namespace) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with KubernetesStore(args.namespace, kubeconfig=args.kubeconfig) as store:
            obj = await store.get(SEMAPHORE, args.semaphore)
            holders = obj.status.get("holders") or []
            return {
                "inUse": obj.status.get("inUse"),
                "holders": sorted({h["holder"] for h in holders}),
            }

    return asyncio.run(read())


def main_sync(args: argparse.Namespace) -> None:
    engine = sync_engine(args)
    say("CREATED")
    wait_for(args.go)
    stop = threading.Event()
    say("START")
    watcher = watch_held(lambda: engine.held, stop)
    if args.fork:
        with engine.connect() as conn:  # the parent reserves and opens a connection
            conn.execute(text("SELECT 1"))
        before = semaphore_state(args)
        say("PARENT", json.dumps(before))
        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=child, args=(engine, args)) for _ in range(args.fork)]
        for c in children:
            c.start()
        for c in children:
            c.join(600)
            assert c.exitcode == 0, c.exitcode
        with engine.connect() as conn:  # the parent's pooled connection still works
            assert conn.execute(text("SELECT 42")).scalar() == 42
        say("AFTER", json.dumps(semaphore_state(args)), "held", engine.held)
        done = 0
    else:
        done = sync_workload(engine, args)
    stop.set()
    watcher.join()
    if not args.no_dispose:
        engine.close()
    say("DONE", done)


# --- async -----------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    engine = AsyncCoordinatedEngine(
        PG.format(driver="asyncpg"),
        semaphore=args.semaphore,
        max_connections=args.cap,
        pool_size=args.pool_size,
        min_connections=args.min,
        ttl=args.ttl,
        grow_interval=args.grow_interval,
        rebalance=args.rebalance,
        reserve_timeout=600,
        store=store_factory(args),
        pool_timeout=600,
        connect_args={"server_settings": {"application_name": args.app}},
    )
    say("CREATED")
    await asyncio.to_thread(wait_for, args.go)

    async def watch() -> None:
        last = -1
        while True:
            if engine.held != last:
                last = engine.held
                say("HELD", last)
            await asyncio.sleep(0.05)

    say("START")
    watcher = asyncio.create_task(watch())

    query = text("SELECT 1 FROM pg_sleep(:s)")

    async def work() -> int:
        done = 0
        while keep_going(args, done):
            if done % 2:
                async with engine.connect() as conn:
                    result = await conn.execute(query, {"s": args.sleep})
                    assert result.scalar() == 1
            else:
                async with engine.begin() as conn:
                    result = await conn.execute(query, {"s": args.sleep})
                    assert result.scalar() == 1
            done += 1
        return done

    counts = await asyncio.gather(*(work() for _ in range(args.workers)))
    watcher.cancel()
    if not args.no_dispose:
        await engine.close()
    say("DONE", sum(counts))


def main() -> None:
    args = parse()
    if args.use_async:
        asyncio.run(main_async(args))
    else:
        main_sync(args)


if __name__ == "__main__":
    main()
    sys.exit(0)
