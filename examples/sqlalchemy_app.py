"""Several "pods" share one database's connection cap fairly through a CoordinatedEngine.

Each pod wants a pool of ``--pool-size`` connections, more than the database
allows for all of them together (``--cap``). Every pod builds a
:class:`~konductor.integrations.sqlalchemy.CoordinatedEngine` on one cluster
semaphore; its pool is sized to the permits it holds, so the total never
exceeds the cap, however hard the pods push. The pods start one after
another (``--stagger`` seconds apart) and keep their pools busy: the first
takes what it wants, and as each newcomer arrives the engines rebalance to
fair shares (idle connections are closed first, connections in use only
when they come back). Meanwhile the example counts the connections in
PostgreSQL's ``pg_stat_activity`` and prints the peak it saw, and each pod's
permits over time.

The pods are threads here, so that the example runs anywhere; in a real
deployment each pod (process) builds the same engine and the semaphore lives
in the Kubernetes API.

Run it (needs PostgreSQL; ``pip install 'konductor[sqlalchemy]' psycopg[binary]``):

    python examples/sqlalchemy_app.py                       # in-memory store
    python examples/sqlalchemy_app.py --kubeconfig ~/.kube/config --namespace default

Options: ``--database-url`` (default: PostgreSQL on 127.0.0.1:5432, user
postgres, database test), ``--pods``, ``--pool-size``, ``--cap``, ``--stagger``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid

import sqlalchemy
from sqlalchemy import text

from konductor import KubernetesStore, MemoryStore, SyncClient
from konductor.integrations.sqlalchemy import CoordinatedEngine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--kubeconfig", help="use this cluster (default: an in-memory store)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--cap", type=int, default=6)
    p.add_argument("--stagger", type=float, default=1.0, help="seconds between pod starts")
    p.add_argument("--timeout", type=float, default=60, help="seconds to reach fair shares")
    p.add_argument("--verbose", action="store_true", help="log every rebalancing move")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # "giving back 1 of 4 connection permit(s) ... for fairness (...)"
        logging.getLogger("konductor.sqlalchemy").setLevel(logging.INFO)

    app = f"konductor-example-{uuid.uuid4().hex[:6]}"  # tags our connections
    semaphore = f"example-db-{uuid.uuid4().hex[:6]}"
    # The in-memory store lives in one client, which the "pods" share; on a
    # cluster every pod (here: every engine) has a client of its own.
    shared = None if args.kubeconfig else SyncClient(MemoryStore)
    kubeconfig = args.kubeconfig

    def pod() -> CoordinatedEngine:
        return CoordinatedEngine(
            args.database_url,
            semaphore=semaphore,
            max_connections=args.cap,  # the cluster-wide cap (creates the semaphore)
            pool_size=args.pool_size,  # what each pod would like
            min_connections=1,
            grow_interval=1,  # rebalance (read the semaphore, grow or give back) every second
            client=shared,
            store=None
            if shared
            else lambda: KubernetesStore(args.namespace, kubeconfig=kubeconfig),
            pool_timeout=120,
            connect_args={"application_name": app},
        )

    pods = [pod() for _ in range(args.pods)]

    # Autocommit: each count is a fresh snapshot (pg_stat_activity is read once per transaction).
    witness = sqlalchemy.create_engine(
        args.database_url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        with witness.connect() as conn:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a")
            while not done.is_set():
                peak = max(peak, conn.execute(query, {"a": app}).scalar_one())
                time.sleep(0.01)

    stop = threading.Event()
    history: dict[int, list[int]] = {}
    queries: dict[int, int] = {}

    def run_pod(n: int, engine: CoordinatedEngine) -> None:
        # One pod's life: reserve (waiting in FIFO order if the cap is taken),
        # keep more threads than connections busy, then give the permits back.
        with engine:
            done = [0]
            lock = threading.Lock()

            def work() -> None:
                while not stop.is_set():
                    with engine.connect() as conn:  # as you always write it
                        conn.execute(text("SELECT pg_sleep(0.02)"))
                    with lock:
                        done[0] += 1

            threads = [threading.Thread(target=work) for _ in range(args.pool_size * 2)]
            for t in threads:
                t.start()
            held = history.setdefault(n, [])
            while not stop.is_set():  # the permits this pod holds, as they change
                if not held or held[-1] != engine.held:
                    held.append(engine.held)
                time.sleep(0.05)
            for t in threads:
                t.join()
            queries[n] = done[0]

    def fair(held: list[int]) -> bool:
        # Max-min fair here (every pod wants more than an equal split): all the
        # permits in use, shares differing by at most one.
        return sum(held) == min(args.cap, args.pool_size * len(held)) and (
            max(held) - min(held) <= 1
        )

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    pod_threads = []
    for n, engine in enumerate(pods, 1):
        if n > 1:
            time.sleep(args.stagger)
        pod_threads.append(threading.Thread(target=run_pod, args=(n, engine)))
        pod_threads[-1].start()
    last = time.monotonic()
    while not fair([e.held for e in pods]) and time.monotonic() - last < args.timeout:
        time.sleep(0.05)
    converged = time.monotonic() - last
    shares = [e.held for e in pods]
    stop.set()
    for t in pod_threads:
        t.join()
    elapsed = time.monotonic() - started
    done.set()
    watcher.join()
    witness.dispose()
    if shared is not None:
        shared.close()

    for n in sorted(history):
        steps = " -> ".join(str(h) for h in history[n])
        print(f"pod {n}: held {steps} permit(s), ran {queries.get(n, 0)} queries")
    print(
        f"{args.pods} pods x pool_size {args.pool_size} under max_connections={args.cap}: "
        f"fair shares {shares} {converged:.1f}s after the last pod started; "
        f"{sum(queries.values())} queries in {elapsed:.1f}s, "
        f"peak {peak} connections (<= {args.cap})"
    )
    if len(queries) != args.pods:
        raise SystemExit("a pod failed (see above)")
    if not fair(shares):
        raise SystemExit(f"no fair shares within {args.timeout:g}s: {shares}")
    if peak > args.cap:
        raise SystemExit(f"the cap was exceeded: {peak} > {args.cap}")


if __name__ == "__main__":
    main()
