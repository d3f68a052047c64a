"""Celery with cluster-wide limits: at most 3 payment API calls at once across
every worker, at most 5 geocoding calls per second across every worker, and a
reindex that never runs twice at once for one shop.

Celery's own ``rate_limit`` and ``-c`` are per worker; here the cap is a
konductor semaphore, and the rate a konductor rate limit, that every worker
process, in every pod, shares.

Needs Redis at 127.0.0.1:6379 as broker and result backend (set
``CELERY_BROKER_URL`` to use another) and a konductor store, found as
``konductor.Client`` finds it: a kubeconfig (``KUBECONFIG`` or
``~/.kube/config``; ``KONDUCTOR_NAMESPACE`` picks the namespace), the pod's
service account, or ``KONDUCTOR_STORE`` (``kubernetes``, or
``local:/tmp/konductor.db`` to try it on one machine without Kubernetes).
Install: ``pip install 'konductor[celery]'``.

All in one command: start 2 workers (prefork, 2 processes each: 4 slots for 3
permits), send payments and reindexes, print what an independent Redis
counter saw, stop the workers::

    python examples/celery_app.py demo --payments 12 --lookups 20

Or run workers yourself, as many as you like, on any machines that share the
broker and the store, and send work to them::

    cd examples && celery -A celery_app worker --pool=prefork -c 4
    python examples/celery_app.py send --payments 12 --lookups 20
"""

from __future__ import annotations

import argparse
import bisect
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from konductor.integrations.celery import CoordinatedTask

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("EXAMPLE_QUEUE", "konductor-example")
HERE = Path(__file__).resolve().parent

app = Celery("payments", broker=BROKER, backend=BROKER)
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
# The store comes from the environment here. To choose it in code instead:
#   app.conf.konductor_store = lambda: konductor.KubernetesStore("payments")


def in_flight(delta: int) -> None:
    """An independent witness of concurrency: a Redis counter and its maximum."""
    r = redis.Redis.from_url(BROKER)
    now = r.incrby(f"example:{QUEUE}:in-flight", delta)
    if delta > 0:
        r.eval(
            "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            f"example:{QUEUE}:peak",
            now,
        )
    r.close()


@app.task(
    name="payments.charge",
    base=CoordinatedTask,
    bind=True,
    semaphore="payments-api",  # one count for the whole cluster
    permits=3,  # at most 3 calls to the payment API at once
    ttl=15,  # a crashed worker's permit comes back 15 s after its last renewal
    requeue_delay=0.2,  # when full: re-queue after 0.1-0.2 s, then longer (jittered)
    requeue_delay_max=2,
)
def charge(self: CoordinatedTask, order_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge an order: the body runs only while this task holds a permit."""
    assert self.permit is not None
    in_flight(+1)
    try:
        time.sleep(0.5)  # the call to the payment API
    finally:
        in_flight(-1)
    # The fencing token grows with every grant: a payment API that remembers
    # the highest token it saw can reject a late call from a holder that lost
    # its permit.
    return {"order": order_id, "cents": amount_cents, "token": self.permit.token}


@app.task(
    name="shops.reindex",
    base=CoordinatedTask,
    singleton=lambda shop: shop,  # at most one running reindex per shop
    on_duplicate="retry",  # a duplicate waits its turn ("drop" would skip it)
    requeue_delay=0.2,
    requeue_delay_max=1,
)
def reindex(shop: str) -> str:
    r = redis.Redis.from_url(BROKER)
    running = r.incr(f"example:{QUEUE}:reindex:{shop}")
    r.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        f"example:{QUEUE}:reindex-peak",
        running,
    )
    time.sleep(0.3)
    r.decr(f"example:{QUEUE}:reindex:{shop}")
    r.close()
    return shop


@app.task(
    name="geo.lookup",
    base=CoordinatedTask,
    cluster_rate_limit="5/s",  # at most 5 calls a second across every worker
    rate_limit_name="geo-api",  # the limit's name in the cluster (kubectl get ratelimits)
    # burst: the default, one second of the rate: 5 tokens saved up at most
    on_limited="retry",  # no token in this process now: re-queue, holding no slot
    ttl=3,  # a stopped worker's share is taken over within 3 s (renewed every 1 s)
    requeue_delay=0.2,
    requeue_delay_max=1,
)
def lookup(address: str) -> str:
    """Geocode an address: the provider allows 5 calls per second, for the whole fleet."""
    r = redis.Redis.from_url(BROKER)
    r.rpush(f"example:{QUEUE}:lookups", f"{time.time():.6f}")  # the witness: when it started
    r.close()
    return address.upper()


def send(payments: int, lookups: int = 0, queue: str = QUEUE) -> None:
    """Send the work to ``queue``, wait for it, print what the witness saw."""
    started = time.monotonic()
    charges = [charge.apply_async((f"order-{i}", 100 * i), queue=queue) for i in range(payments)]
    reindexes = [reindex.apply_async(("shop-1",), queue=queue) for _ in range(3)]
    geos = [lookup.apply_async((f"{i} main st",), queue=queue) for i in range(lookups)]
    tokens = [r.get(timeout=600)["token"] for r in charges]
    shops = [r.get(timeout=600) for r in reindexes]
    addresses = [r.get(timeout=600) for r in geos]
    r = redis.Redis.from_url(BROKER)
    peak = int(r.get(f"example:{queue}:peak") or 0)
    reindex_peak = int(r.get(f"example:{queue}:reindex-peak") or 0)
    starts = sorted(float(t) for t in r.lrange(f"example:{queue}:lookups", 0, -1))
    r.delete(*r.keys(f"example:{queue}:*"))
    r.close()
    print(f"{len(tokens)} payments charged in {time.monotonic() - started:.1f}s")
    print(f"at most {peak} payment API calls at once (limit 3)")
    print(f"{len(shops)} reindexes of shop-1, at most {reindex_peak} at once (singleton)")
    distinct = len(set(tokens)) == len(tokens)
    print(f"fencing tokens {min(tokens)}..{max(tokens)}, all distinct: {distinct}")
    # The rate limit's guarantee: in any window of T seconds at most burst + rate * T.
    busiest = max((bisect.bisect_left(starts, t + 1) - i for i, t in enumerate(starts)), default=0)
    if addresses:
        print(
            f"{len(addresses)} lookups in {starts[-1] - starts[0]:.1f}s, at most {busiest} "
            "started in any 1 s (limit 5/s, burst 5: at most 10)"
        )
    if peak > 3 or reindex_peak > 1 or busiest > 10:
        raise SystemExit("the cluster-wide limit was exceeded")


def demo(payments: int, lookups: int) -> None:
    """Start 2 prefork workers (2 processes each) on a private queue, send, stop."""
    queue = f"konductor-example-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "EXAMPLE_QUEUE": queue,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    worker = [sys.executable, "-m", "celery", "-q", "-A", "celery_app", "worker", "--pool=prefork"]
    worker += ["-c", "2", "-Q", queue, "-l", "WARNING"]
    worker += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    workers = [
        subprocess.Popen(
            [*worker, "-n", f"example{i}.{queue}@%h"],
            cwd=HERE,
            env=env,
            start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        send(payments, lookups, queue)
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)  # warm shutdown of the worker and its children
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        redis.Redis.from_url(BROKER).delete(
            queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "send"])
    parser.add_argument("--payments", type=int, default=12)
    parser.add_argument("--lookups", type=int, default=20)
    args = parser.parse_args()
    if args.command == "demo":
        demo(args.payments, args.lookups)
    else:
        send(args.payments, args.lookups)
