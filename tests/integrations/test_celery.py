"""The Celery integration with real workers, a real broker and the real API server.

Workers are real ``celery worker`` subprocesses (prefork: 2 workers x
concurrency 2 unless a test says otherwise) on Redis at 127.0.0.1:6379; the
coordination store is the session's kube-apiserver. Concurrency claims are
checked with an independent witness: Redis counters the task bodies update.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest

from tests.integrations.celery_support import CeleryCluster
from tests.integrations.celery_support import celery_cluster as celery_cluster
from tests.store.conftest import kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes


def test_twenty_tasks_never_exceed_two_permits(celery_cluster: CeleryCluster) -> None:
    c = celery_cluster
    c.start(count=2, concurrency=2)
    started = time.monotonic()
    results = [c.send("gated", key=c.key, hold=0.3) for _ in range(20)]
    pids = [c.get(r) for r in results]
    elapsed = time.monotonic() - started
    assert all(isinstance(p, int) for p in pids)
    assert c.count("total") == 20  # every task ran its body once
    assert c.count("max") <= 2, f"the witness saw {c.count('max')} tasks inside at once"
    assert c.count("max") == 2  # and the contention was real
    assert c.count("inside") == 0
    assert len(set(pids)) >= 2  # more than one worker process took part
    status = c.semaphore_status("gated")
    assert status.get("holders") in (None, [])
    print(
        f"\n20 tasks, permits=2: {elapsed:.1f}s, {c.count('state:RETRY')} re-queues, "
        f"{len(set(pids))} worker processes"
    )


def test_on_full_wait_queues_then_requeues_after_wait_timeout(
    celery_cluster: CeleryCluster,
) -> None:
    c = celery_cluster
    c.start(count=2, concurrency=2)
    results = [c.send("patient", key=c.key, hold=0.5) for _ in range(8)]
    assert all(isinstance(c.get(r), int) for r in results)
    assert c.count("total") == 8
    assert c.count("max") == 1
    # 8 x 0.5 s behind one permit: some waited longer than wait_timeout=1 s
    # in the queue and were sent back.
    assert c.count("state:RETRY") >= 1
    status = c.semaphore_status("patient")
    assert not status.get("holders")
    assert not status.get("queue")  # no ticket left behind by the timed-out waits
    print(f"\n8 tasks, permits=1, on_full='wait': {c.count('state:RETRY')} re-queues")


def test_waiting_gated_tasks_hold_no_worker_slot(celery_cluster: CeleryCluster) -> None:
    # One permit, taken by a task that holds it until the test says so. Gated
    # tasks sent next can only wait; ungated tasks sent after them must still
    # run, so the waiting gated tasks do not occupy the 4 worker slots.
    c = celery_cluster
    c.start(count=2, concurrency=2)
    held = c.send("holder", key=c.key)
    c.wait_for(lambda: c.redis.get(f"{c.key}:holder-pid"), "the holder inside")
    behind_key = f"{c.key}:behind"
    waiting = [c.send("behind", key=behind_key) for _ in range(6)]
    # Each waiting task was taken by a worker and sent back (state RETRY) ...
    c.wait_for(lambda: all(r.state == "RETRY" for r in waiting), "the gated tasks re-queued")
    started = time.monotonic()
    plain = [c.send("plain", key=c.key) for _ in range(8)]
    assert [c.get(r, timeout=120) for r in plain] == ["plain"] * 8
    elapsed = time.monotonic() - started
    # ... and while they wait (the permit is still held), the plain ones all ran.
    assert c.count("total", behind_key) == 0  # none of the gated ones got in
    assert not held.ready()
    assert c.count("inside") == 1
    c.release()
    assert c.get(held) == "held"
    assert [c.get(r) for r in waiting] == ["behind"] * 6
    assert c.count("max", behind_key) == 1
    print(f"\n8 ungated tasks behind 6 waiting gated ones: all done in {elapsed:.2f}s")


def test_a_sigkilled_childs_permit_comes_back_within_its_ttl(
    celery_cluster: CeleryCluster,
) -> None:
    c = celery_cluster
    ttl = 3.0  # tests/integrations/celery_app.py CRASH
    c.start(count=2, concurrency=2)
    doomed = c.send("victim", key=c.key)
    c.wait_for(lambda: c.redis.get(f"{c.key}:victim-pid"), "the victim inside")
    survivors = [c.send("survivor", key=c.key) for _ in range(4)]
    c.wait_for(lambda: all(r.state == "RETRY" for r in survivors), "the others waiting")
    assert c.semaphore_status("crashy")["inUse"] == 1
    pid = int(c.redis.get(f"{c.key}:victim-pid") or 0)
    os.kill(pid, signal.SIGKILL)  # a pool child of a worker this test started
    killed_at = time.time()
    finished = [c.get(r, timeout=120) for r in survivors]
    first_entry = sorted(c.entries())[1]  # entry 0 is the victim's
    waited = first_entry - killed_at
    assert waited < ttl + 5, f"the permit came back {waited:.1f}s after the kill"
    assert waited > ttl / 2  # not handed out early: the dead holder's entry had to expire
    assert len(finished) == 4
    assert c.count("total") == 5
    # The victim itself failed (the worker lost it); nothing is left held.
    c.wait_for(lambda: doomed.state == "FAILURE", "the victim's failure recorded")
    status = c.semaphore_status("crashy")
    assert status["inUse"] == 0
    assert not status.get("holders")
    assert not status.get("queue")
    c.check_alive()  # the worker replaced its child and went on
    print(f"\nSIGKILLed holder (ttl={ttl:g}s): next task entered {waited:.2f}s after the kill")


def test_singleton_duplicates_never_run_at_once(celery_cluster: CeleryCluster) -> None:
    c = celery_cluster
    c.start(count=2, concurrency=2)
    results = [c.send("single", "order-7", key=c.key) for _ in range(5)]
    results += [c.send("single", "order-8", key=c.key) for _ in range(5)]
    assert sorted(c.get(r) for r in results) == ["order-7"] * 5 + ["order-8"] * 5
    for item in ("order-7", "order-8"):
        key = f"{c.key}:{item}"
        assert c.count("total", key) == 5  # every duplicate ran, one after the other
        assert c.count("max", key) == 1, f"{item}: two duplicates ran at once"
    print(f"\n2 keys x 5 duplicates: {c.count('state:RETRY')} re-queues")


def test_singleton_drops_duplicates_by_policy(celery_cluster: CeleryCluster) -> None:
    c = celery_cluster
    c.start(count=2, concurrency=2)
    first = c.send("single_drop", key=c.key)
    c.wait_for(lambda: c.count("total") == 1, "the first instance running")
    duplicates = [c.send("single_drop", key=c.key) for _ in range(4)]
    c.wait_for(lambda: c.count("state:IGNORED") == 4, "the duplicates dropped")
    c.release()
    assert c.get(first) == "ran"
    assert c.count("total") == 1  # no duplicate ever ran its body
    assert all(r.state == "PENDING" for r in duplicates)  # Ignore stores no result


@pytest.mark.parametrize(
    ("task", "outcome"),
    [
        ("succeeds", "SUCCESS"),
        ("fails", "FAILURE"),
        ("retries_once", "SUCCESS"),
        ("too_slow", "FAILURE"),  # SoftTimeLimitExceeded
    ],
)
def test_the_permit_is_released_in_every_outcome(
    celery_cluster: CeleryCluster, task: str, outcome: str
) -> None:
    # ttl=60: a permit that was not released would stay held for a minute, so
    # an empty holder list right after the task ended means it was released.
    c = celery_cluster
    c.start(count=1, concurrency=2)
    result = c.send(task, key=c.key)
    try:
        result.get(timeout=120, propagate=False)
    except Exception as exc:
        raise AssertionError(c.worker_logs()) from exc
    assert result.state == outcome, c.worker_logs()
    if task == "too_slow":
        assert "SoftTimeLimitExceeded" in repr(result.result)
        assert c.count("bodies") == 1  # it interrupted the body, holding the permit
    if task == "retries_once":
        assert result.result == 1
    status = c.semaphore_status("outcomes")
    assert status["inUse"] == 0
    assert not status.get("holders")
    # and the next task gets the permit at once
    assert isinstance(c.get(c.send("succeeds", key=c.key), timeout=60), int)


def test_renewal_keeps_a_long_tasks_permit(celery_cluster: CeleryCluster) -> None:
    # ttl=2, the body runs 8 s: without renewals the others would get in.
    c = celery_cluster
    c.start(count=2, concurrency=2)
    long = c.send("long_running", key=c.key, seconds=8)
    c.wait_for(lambda: c.count("total") == 1, "the long task inside")
    others = [c.send("short_after", key=c.key) for _ in range(3)]
    token = c.get(long)
    assert isinstance(token, int)  # not SemaphoreLost
    assert [c.get(r) for r in others] == ["short"] * 3
    assert c.count("max") == 1
    assert c.count("total") == 4


def test_threads_pool_creates_its_client_lazily(celery_cluster: CeleryCluster) -> None:
    c = celery_cluster
    c.start(count=1, concurrency=4, pool="threads")
    results = [c.send("gated", key=c.key, hold=0.2) for _ in range(8)]
    pids = {c.get(r) for r in results}
    assert len(pids) == 1  # threads of one process, sharing one client
    assert c.count("total") == 8
    assert c.count("max") <= 2


def test_gated_tasks_wait_out_a_store_outage(celery_cluster: CeleryCluster, tmp_path: Any) -> None:
    # The workers reach the API server through a proxy the test controls, with
    # the store built by app.conf.konductor_store (a factory). While the API
    # server is unreachable the gate cannot be decided: tasks are re-queued,
    # none runs ungated and none fails; once it is back, all complete.
    c = celery_cluster
    with TcpProxy.to(c.kube.server) as proxy:
        c.env["KT_STORE_FACTORY"] = "1"
        c.env["KT_STORE_KUBECONFIG"] = str(
            kubeconfig_via(c.kube.admin_kubeconfig, proxy.server, tmp_path)
        )
        c.start(count=2, concurrency=2)
        proxy.reset()
        results = [c.send("gated", key=c.key, hold=0.2) for _ in range(4)]
        c.wait_for(lambda: c.count("state:RETRY") >= 8, "re-queues during the outage")
        assert c.count("total") == 0  # nothing ran without its permit
        assert all(r.state == "RETRY" for r in results)
        proxy.pass_through()
        assert all(isinstance(c.get(r, timeout=180), int) for r in results)
    assert c.count("total") == 4
    assert c.count("max") <= 2
    assert c.count("state:FAILURE") == 0
    assert "the coordination store is unavailable" in c.worker_logs(lines=100000)


def test_a_blackholed_workers_task_loses_its_permit_before_a_rival_worker_gets_it(
    celery_cluster: CeleryCluster, tmp_path: Any
) -> None:
    # Worker A (prefork, one child) reaches the API server through a proxy, with the
    # store's default timeouts; worker B directly, on a queue of its own. A's task
    # holds the permit (ttl=3) and checks it between steps; at a random moment the
    # proxy is blackholed. The witness is Redis: wall-clock timestamps written by the
    # task bodies and by the test, all on this machine.
    c = celery_cluster
    ttl, margin = 3.0, 1.0
    rival_queue = f"{c.queue}-b"
    with TcpProxy.to(c.kube.server) as proxy:
        via = kubeconfig_via(c.kube.admin_kubeconfig, proxy.server, tmp_path)
        c.start(
            count=1,
            concurrency=1,
            env={"KT_STORE_FACTORY": "defaults", "KT_STORE_KUBECONFIG": str(via)},
        )
        c.start(count=1, concurrency=1, queue=rival_queue)
        held = c.send("cut_off_holder", key=c.key)
        c.wait_for(lambda: c.redis.get(f"{c.key}:holder-in"), "the holder inside")
        time.sleep(random.uniform(0.0, ttl / 3 * 1.2))
        proxy.blackhole()
        cut = time.time()
        rival = c.send_on(rival_queue, "cut_off_rival", key=c.key)
        rival_token = c.get(rival, timeout=60)
        held.get(timeout=60, propagate=False)
        assert held.state == "FAILURE", c.worker_logs()
        # The body's return value is not trusted: the task failed with SemaphoreLost.
        assert type(held.result).__name__ == "SemaphoreLost", repr(held.result)
        assert "the result is not trusted" in str(held.result)
        lost = float(c.redis.get(f"{c.key}:holder-lost") or 0)
        (rival_in,) = (float(v) for v in c.redis.lrange(f"{c.key}:rival-in", 0, -1))
        print(
            f"\ncelery blackhole: cut->loss {lost - cut:.3f}s, "
            f"cut->rival worker granted {rival_in - cut:.3f}s"
        )
        assert lost < rival_in  # the holder knew before the rival was inside
        assert lost - cut <= 0.9 * ttl + margin
        # The network heals: worker A runs the next one, with a newer token.
        proxy.pass_through()
        again = c.send("cut_off_rival", key=c.key)
        assert c.get(again, timeout=120) > rival_token
        c.check_alive()
    status = c.semaphore_status("cut-off")
    assert not status.get("holders")
    assert not status.get("queue")
