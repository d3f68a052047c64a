"""Several "pods" share one database's connection cap through a CoordinatedEngine.

Each pod wants a pool of ``--pool-size`` connections, more than the database
allows for all of them together (``--cap``). Every pod builds a
:class:`~konductor.integrations.sqlalchemy.CoordinatedEngine` on one cluster
semaphore; its pool is sized to the permits it could reserve, so the total
never exceeds the cap, however hard the pods push; a pod that finds the cap
taken waits in the semaphore's FIFO queue until another pod's engine closes.
Meanwhile the example counts the connections in PostgreSQL's
``pg_stat_activity`` and prints the peak it saw.

The pods are threads here, so that the example runs anywhere; in a real
deployment each pod (process) builds the same engine and the semaphore lives
in the Kubernetes API.

Run it (needs PostgreSQL; ``pip install 'konductor[sqlalchemy]' psycopg[binary]``):

    python examples/sqlalchemy_app.py                       # in-memory store
    python examples/sqlalchemy_app.py --kubeconfig ~/.kube/config --namespace default

Options: ``--database-url`` (default: PostgreSQL on 127.0.0.1:5432, user
postgres, database test), ``--pods``, ``--pool-size``, ``--cap``, ``--queries``.
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
    p.add_argument("--queries", type=int, default=20, help="per worker thread")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

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
            grow_interval=1,  # busy pods try for more permits at most once a second
            client=shared,
            store=None
            if shared
            else lambda: KubernetesStore(args.namespace, kubeconfig=kubeconfig),
            pool_timeout=120,
            connect_args={"application_name": app},
        )

    pods = [pod() for _ in range(args.pods)]

    witness = sqlalchemy.create_engine(args.database_url, poolclass=sqlalchemy.pool.NullPool)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        with witness.connect() as conn:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a")
            while not done.is_set():
                peak = max(peak, conn.execute(query, {"a": app}).scalar_one())
                time.sleep(0.01)

    report: list[str] = []

    def run_pod(n: int, engine: CoordinatedEngine) -> None:
        # One pod's life: reserve (waiting in FIFO order if the cap is taken),
        # work with more threads than connections, then give the permits back.
        t0 = time.monotonic()
        with engine:
            waited = time.monotonic() - t0

            def work() -> None:
                for _ in range(args.queries):
                    with engine.connect() as conn:  # as you always write it
                        conn.execute(text("SELECT pg_sleep(0.01)"))

            threads = [threading.Thread(target=work) for _ in range(args.pool_size * 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            report.append(
                f"pod {n}: waited {waited:.1f}s for permits, reserved up to {engine.held} "
                f"connection(s), ran {len(threads) * args.queries} queries"
            )

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    pod_threads = [
        threading.Thread(target=run_pod, args=(n, engine)) for n, engine in enumerate(pods, 1)
    ]
    for t in pod_threads:
        t.start()
    for t in pod_threads:
        t.join()
    elapsed = time.monotonic() - started
    done.set()
    watcher.join()
    witness.dispose()
    if shared is not None:
        shared.close()

    print("\n".join(sorted(report)))
    total = args.pods * args.pool_size * 2 * args.queries
    print(
        f"{args.pods} pods x pool_size {args.pool_size} under max_connections={args.cap}: "
        f"{total} queries in {elapsed:.1f}s, peak {peak} connections (<= {args.cap})"
    )
    if len(report) != args.pods:
        raise SystemExit("a pod failed (see above)")
    if peak > args.cap:
        raise SystemExit(f"the cap was exceeded: {peak} > {args.cap}")


if __name__ == "__main__":
    main()
