"""The Celery app the integration tests run in real ``celery worker`` subprocesses.

Configured from the environment the test gives each worker:

- ``KT_CELERY_BROKER``: Redis URL used as broker and result backend;
- ``KT_CELERY_QUEUE``: the test's own queue (tests never share a queue);
- ``KONDUCTOR_STORE=kubernetes``, ``KUBECONFIG``, ``KONDUCTOR_NAMESPACE``: the
  coordination store, the real API server, a fresh namespace per test.

Every task reports to an independent witness in Redis (``key`` argument):
``:inside`` / ``:max`` / ``:total`` count holders inside the gated body.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, signals

from konductor.integrations.celery import CoordinatedTask
from tests.support.witness import ENTER

BROKER = os.environ.get("KT_CELERY_BROKER", "redis://127.0.0.1:6379/10")
QUEUE = os.environ.get("KT_CELERY_QUEUE", "konductor-tests")

app = Celery("kt_celery", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=600,
    worker_prefetch_multiplier=4,
    task_track_started=False,
)

if os.environ.get("KT_STORE_FACTORY"):
    # The store chosen in the Celery config (a factory, called in each worker
    # process) instead of the environment; short retries for the outage test.
    from konductor import KubernetesStore

    def _store() -> KubernetesStore:
        if os.environ["KT_STORE_FACTORY"] == "defaults":  # the bounds must not need tuning
            return KubernetesStore(
                os.environ["KONDUCTOR_NAMESPACE"], kubeconfig=os.environ["KT_STORE_KUBECONFIG"]
            )
        return KubernetesStore(
            os.environ["KONDUCTOR_NAMESPACE"],
            kubeconfig=os.environ["KT_STORE_KUBECONFIG"],
            retry_deadline=1.0,
            request_timeout=3.0,
        )

    app.conf.konductor_store = _store


_redis: tuple[int, redis.Redis] | None = None


def witness() -> redis.Redis:
    """A Redis connection of this process (a forked child must not share the parent's)."""
    global _redis
    if _redis is None or _redis[0] != os.getpid():
        # redis-py 8 reads with a 5 s socket timeout by default, which ends the
        # BLPOP of wait_for_release() after 5 s whatever its own timeout says.
        _redis = (os.getpid(), redis.Redis.from_url(BROKER, socket_timeout=300))
    return _redis[1]


def enter(key: str) -> None:
    r = witness()
    r.eval(ENTER, 3, f"{key}:inside", f"{key}:max", f"{key}:total")
    r.rpush(f"{key}:entries", f"{time.time():.6f}")


def leave(key: str) -> None:
    witness().decr(f"{key}:inside")


def wait_for_release(key: str, timeout: float = 240.0) -> None:
    """Block the body until the test pushes to ``key:release`` (or time out)."""
    if witness().blpop([f"{key}:release"], timeout=int(timeout)) is None:
        raise TimeoutError(f"{key}: never released by the test")


@signals.worker_ready.connect
def _ready(sender: Any, **_: Any) -> None:
    witness().sadd(f"kt-celery:{QUEUE}:ready", sender.hostname)


@signals.task_postrun.connect
def _postrun(sender: Any, kwargs: Any = None, state: str | None = None, **_: Any) -> None:
    key = (kwargs or {}).get("key")
    if key:
        witness().incr(f"{key}:state:{state}")


# -- permits=2, re-queue when full -------------------------------------------------------


@app.task(
    base=CoordinatedTask,
    semaphore="gated",
    permits=2,
    requeue_delay=0.2,
    requeue_delay_max=1.0,
)
def gated(*, key: str, hold: float = 0.3) -> int:
    enter(key)
    try:
        time.sleep(hold)
    finally:
        leave(key)
    return os.getpid()


# -- permits=1, waiting in the FIFO queue (holding the slot) for up to 1 s ------------


@app.task(
    base=CoordinatedTask,
    semaphore="patient",
    permits=1,
    on_full="wait",
    wait_timeout=1,
    requeue_delay=0.2,
    requeue_delay_max=1.0,
)
def patient(*, key: str, hold: float = 0.5) -> int:
    enter(key)
    try:
        time.sleep(hold)
    finally:
        leave(key)
    return os.getpid()


# -- one permit, held until the test says so; others wait by re-queueing ----------------


@app.task(
    base=CoordinatedTask, semaphore="slow", permits=1, requeue_delay=0.2, requeue_delay_max=1.0
)
def holder(*, key: str) -> str:
    enter(key)
    try:
        witness().set(f"{key}:holder-pid", os.getpid())
        wait_for_release(key)
    finally:
        leave(key)
    return "held"


@app.task(
    base=CoordinatedTask, semaphore="slow", permits=1, requeue_delay=0.2, requeue_delay_max=1.0
)
def behind(*, key: str) -> str:
    enter(key)
    leave(key)
    return "behind"


@app.task
def plain(*, key: str) -> str:
    witness().incr(f"{key}:plain")
    return "plain"


# -- a crash: the victim is SIGKILLed by the test ----------------------------------------

CRASH = {
    "semaphore": "crashy",
    "permits": 1,
    "ttl": 3,
    "requeue_delay": 0.2,
    "requeue_delay_max": 1.0,
}


@app.task(base=CoordinatedTask, **CRASH)
def victim(*, key: str) -> None:
    enter(key)
    witness().set(f"{key}:victim-pid", os.getpid())
    time.sleep(600)  # killed long before


@app.task(base=CoordinatedTask, **CRASH)
def survivor(*, key: str) -> float:
    enter(key)
    try:
        time.sleep(0.2)
    finally:
        leave(key)
    return time.time()


# -- singletons ---------------------------------------------------------------------------


@app.task(
    base=CoordinatedTask,
    singleton=lambda item, **_: item,
    requeue_delay=0.2,
    requeue_delay_max=1.0,
)
def single(item: str, *, key: str, hold: float = 0.4) -> str:
    enter(f"{key}:{item}")
    try:
        time.sleep(hold)
    finally:
        leave(f"{key}:{item}")
    return item


@app.task(base=CoordinatedTask, singleton=True, on_duplicate="drop")
def single_drop(*, key: str) -> str:
    enter(key)
    try:
        wait_for_release(key)
    finally:
        leave(key)
    return "ran"


# -- every outcome releases the permit; renewal keeps a long task's permit -------------

OUTCOME = {
    "semaphore": "outcomes",
    "permits": 1,
    "ttl": 60,
    "requeue_delay": 0.2,
    "requeue_delay_max": 1.0,
}


@app.task(base=CoordinatedTask, bind=True, **OUTCOME)
def succeeds(self: CoordinatedTask, *, key: str) -> int:
    assert self.permit is not None
    self.permit.ensure_held()
    return self.permit.token


@app.task(base=CoordinatedTask, **OUTCOME)
def fails(*, key: str) -> None:
    raise RuntimeError("the task body failed")


@app.task(base=CoordinatedTask, bind=True, max_retries=3, **OUTCOME)
def retries_once(self: CoordinatedTask, *, key: str) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return int(self.request.retries)


@app.task(base=CoordinatedTask, soft_time_limit=5, **OUTCOME)
def too_slow(*, key: str) -> None:
    # The soft time limit counts from the task's start, the permit's acquisition
    # included: 5 s, so that it interrupts the body (recorded), not a first
    # acquisition slowed by a loaded machine (1 s was not always enough).
    witness().incr(f"{key}:bodies")
    time.sleep(30)  # the soft time limit interrupts this


LONG = {
    "semaphore": "renewed",
    "permits": 1,
    "ttl": 2,
    "requeue_delay": 0.2,
    "requeue_delay_max": 0.5,
}


@app.task(base=CoordinatedTask, bind=True, **LONG)
def long_running(self: CoordinatedTask, *, key: str, seconds: float = 8.0) -> int:
    enter(key)
    try:
        time.sleep(seconds)  # 4 TTLs: only renewal keeps the permit
        assert self.permit is not None
        self.permit.ensure_held()
    finally:
        leave(key)
    return self.permit.token


@app.task(base=CoordinatedTask, **LONG)
def short_after(*, key: str) -> str:
    enter(key)
    leave(key)
    return "short"


# -- a holder whose network is cut (its worker reaches the API server through a proxy) ----

CUT = {"semaphore": "cut-off", "permits": 1, "ttl": 3}


@app.task(base=CoordinatedTask, bind=True, **CUT)
def cut_off_holder(self: CoordinatedTask, *, key: str) -> int:
    """Hold the permit, checking it between steps of work as user code should."""
    assert self.permit is not None
    r = witness()
    r.set(f"{key}:holder-in", f"{time.time():.6f}")
    deadline = time.monotonic() + 120
    while not self.permit.is_lost and time.monotonic() < deadline:
        time.sleep(0.01)  # one step of work
    r.set(f"{key}:holder-lost", f"{time.time():.6f}")
    return self.permit.token  # not trusted: the task fails with SemaphoreLost


@app.task(base=CoordinatedTask, bind=True, on_full="wait", wait_timeout=60, **CUT)
def cut_off_rival(self: CoordinatedTask, *, key: str) -> int:
    assert self.permit is not None
    witness().rpush(f"{key}:rival-in", f"{time.time():.6f}")
    return self.permit.token


# -- a cluster-wide rate limit: 10 bodies start per second across every worker -----------

RATE = {
    "cluster_rate_limit": "10/s",
    "rate_limit_name": "limited",
    # burst: the default, one second of the rate (10 tokens, 2.5 per worker process)
    "ttl": 3,  # renewals (and share moves) every second
    "requeue_delay": 0.2,
    "requeue_delay_max": 2.0,
}


@app.task(base=CoordinatedTask, **RATE)
def limited(i: int, *, key: str) -> int:
    witness().rpush(f"{key}:entries", f"{time.time():.6f}")  # the start, as the witness saw it
    witness().rpush(f"{key}:pids", os.getpid())
    time.sleep(0.02)  # the rate-limited call
    return os.getpid()


@app.task(base=CoordinatedTask, on_limited="wait", wait_timeout=30, **RATE)
def limited_waiting(i: int, *, key: str) -> int:
    witness().rpush(f"{key}:entries", f"{time.time():.6f}")
    return os.getpid()


# -- a rate limit and a semaphore on one task: 10 starts/s, 2 at once, each 0.2 s -------


@app.task(
    base=CoordinatedTask,
    semaphore="metered",
    permits=2,
    cluster_rate_limit="10/s",
    rate_limit_name="metered",
    ttl=3,
    requeue_delay=0.2,
    requeue_delay_max=1.0,
)
def metered(i: int, *, key: str, hold: float = 0.2) -> int:
    enter(key)  # also records the start in key:entries
    try:
        time.sleep(hold)
    finally:
        leave(key)
    return os.getpid()
