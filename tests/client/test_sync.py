"""The blocking facade, on the memory store and the real API server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from konductor import AcquireTimeout, MemoryStore, SemaphoreLost
from konductor._sync import SyncClient
from konductor.store import SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace


def test_sync_semaphore_on_memory() -> None:
    with SyncClient(MemoryStore) as client:
        with client.semaphore("s", permits=1) as permit:
            assert permit.token == 1
            permit.ensure_held()
            assert client.try_acquire_semaphore("s") is None
            with pytest.raises(AcquireTimeout):
                client.acquire_semaphore("s", timeout=0.2)
        again = client.acquire_semaphore("s")
        assert again.token == 2
        again.release()
        again.release()  # idempotent
        with client.mutex("m") as lock:
            assert lock.grant.mode == "exclusive"


def test_closed_client_refuses_calls() -> None:
    client = SyncClient(MemoryStore)
    client.acquire_semaphore("s", permits=1)
    client.close()
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.acquire_semaphore("s")


@pytest.fixture
def kube_ns(kube_crds: Any) -> tuple[Any, str]:
    return kube_crds, fresh_namespace(kube_crds)


def factory(env: Any, ns: str) -> Any:
    return lambda: KubernetesStore(ns, kubeconfig=env.admin_kubeconfig)


@pytest.mark.kubernetes
def test_renewals_run_while_sync_code_runs(kube_ns: tuple[Any, str]) -> None:
    env, ns = kube_ns
    with SyncClient(factory(env, ns)) as a, SyncClient(factory(env, ns)) as b:
        with a.semaphore("long", permits=1, ttl=1.5) as permit:
            time.sleep(5)  # blocking work for more than 3 TTLs
            permit.ensure_held()
            assert b.try_acquire_semaphore("long", ttl=1.5) is None
        assert b.try_acquire_semaphore("long", ttl=1.5) is not None


@pytest.mark.kubernetes
def test_threads_share_one_sync_client_safely(kube_ns: tuple[Any, str]) -> None:
    env, ns = kube_ns
    inside = peak = 0
    guard = threading.Lock()
    with SyncClient(factory(env, ns)) as client:

        def work() -> None:
            nonlocal inside, peak
            for _ in range(3):
                with client.semaphore("threads", permits=2, timeout=60):
                    with guard:
                        inside += 1
                        peak = max(peak, inside)
                    time.sleep(0.02)
                    with guard:
                        inside -= 1

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak == 2


@pytest.mark.kubernetes
def test_a_lost_grant_makes_ensure_held_and_exit_raise(kube_ns: tuple[Any, str]) -> None:
    env, ns = kube_ns

    def remove_holders() -> None:
        import asyncio

        async def go() -> None:
            async with KubernetesStore(ns, kubeconfig=env.admin_kubeconfig) as store:
                obj = await store.get(SEMAPHORE, "taken")
                status = {**obj.status, "holders": [], "inUse": 0}
                await store.replace_status(SEMAPHORE, "taken", status, version=obj.version)

        asyncio.run(go())

    with (
        SyncClient(factory(env, ns)) as client,
        pytest.raises(SemaphoreLost),
        client.semaphore("taken", permits=1, ttl=3) as permit,
    ):
        remove_holders()  # another client judged us dead
        deadline = time.monotonic() + 30
        while not permit.is_lost and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(SemaphoreLost):
            permit.ensure_held()


@pytest.mark.kubernetes
def test_fork_parent_and_child_both_acquire(kube_ns: tuple[Any, str]) -> None:
    env, ns = kube_ns
    client = SyncClient(factory(env, ns))
    parent_permit = client.acquire_semaphore("forked", permits=2)
    parent_identity = client.identity
    pid = os.fork()
    if pid == 0:  # the child: a fresh loop and client, never the parent's
        code = 1
        try:
            assert client.identity != parent_identity
            with client.semaphore("forked", timeout=30) as p:
                assert p.token > parent_permit.token
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent_permit.ensure_held()  # the child did not release the parent's permit
    parent_permit.release()
    with client.semaphore("forked", timeout=30):
        pass
    client.close()


def test_sync_twins_of_every_primitive_on_memory() -> None:
    ran: list[int] = []
    with SyncClient(MemoryStore) as client:
        with client.lease("leader", ttl=5) as lease:
            assert lease.token == 0
        assert client.once("init", lambda: ran.append(1) or "result") == "result"
        assert client.once("init", lambda: ran.append(2)) is None  # already done
        assert ran == [1]
        assert client.once_status("init").done
        info = client.arrive_and_wait("start", expected=1, timeout=5)
        assert info.open
        assert client.barrier_status("start").arrived_count == 1
        client.create_gate("go")
        assert not client.gate_status("go").open
        client.open_gate("go")
        assert client.wait_gate("go", timeout=5).open
        assert client.waitgroup_add("wg", 2) == 2
        assert client.waitgroup_done("wg") == 1
        assert client.waitgroup_done("wg") == 0
        assert client.waitgroup_wait("wg", timeout=5).count == 0
        with client.read_lock("rw"), client.read_lock("rw"):
            pass
        write = client.acquire_write_lock("rw")
        assert write.grant.mode == "write"
        write.release()


@pytest.mark.kubernetes
def test_sync_barrier_and_lease_across_clients(kube_ns: tuple[Any, str]) -> None:
    env, ns = kube_ns
    passed: list[str] = []
    with SyncClient(factory(env, ns)) as a, SyncClient(factory(env, ns)) as b:

        def party(client: SyncClient, tag: str) -> None:
            client.arrive_and_wait("meet", expected=2, timeout=60)
            passed.append(tag)

        t = threading.Thread(target=party, args=(a, "a"))
        t.start()
        time.sleep(0.5)
        assert passed == []  # a waits for b
        party(b, "b")
        t.join()
        assert sorted(passed) == ["a", "b"]
        with a.lease("sync-leader", ttl=3) as lease:
            assert b.try_acquire_lease("sync-leader", ttl=3) is None
            held_token = lease.token
        taken = b.acquire_lease("sync-leader", ttl=3, timeout=30)
        assert taken.token > held_token
        taken.release()


def test_a_failed_start_leaves_no_thread_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from konductor import ConfigurationError

    monkeypatch.setenv("KONDUCTOR_STORE", "bogus")
    before = {t.ident for t in threading.enumerate()}
    client = SyncClient()
    for _ in range(3):
        with pytest.raises(ConfigurationError):
            client.acquire_semaphore("s", permits=1)
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert [t.name for t in leaked] == []


def test_grants_are_released_when_the_process_exits(tmp_path: Any) -> None:
    """A script that never closes its SyncClient still gives its permit back at exit."""
    import subprocess
    import sys

    from konductor import LocalStore

    db = tmp_path / "k.db"
    script = (
        "from konductor import SyncClient, LocalStore\n"
        f"c = SyncClient(lambda: LocalStore({str(db)!r}))\n"
        "p = c.acquire_semaphore('exit', permits=1, ttl=120)\n"
        "print(p.token, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"

    import asyncio

    async def status() -> Any:
        async with LocalStore(db) as store:
            return (await store.get(SEMAPHORE, "exit")).status

    st = asyncio.run(status())
    assert st["holders"] == []  # released at exit, not left to expire (ttl 120 s)
    assert st["inUse"] == 0


class _Interrupted(Exception):
    """Raised into the waiting thread by a signal, as Celery's soft time limit does."""


def test_an_interrupted_acquire_leaves_no_ticket_once_it_raises(
    kube_crds: Any, tmp_path: Path
) -> None:
    """An exception raised into the caller's thread (SIGALRM here; Celery's soft time
    limit, a KeyboardInterrupt) cancels the acquire, and the call raises only once the
    ticket is gone: nothing is queued or held after it raised. The waiter's connection
    is slowed (every chunk 1 s late) so that its clean-up takes long enough to see."""
    import signal

    from tests.store.conftest import kubeconfig_via
    from tests.support.tcpproxy import TcpProxy

    ns = fresh_namespace(kube_crds)
    cfg = str(kube_crds.admin_kubeconfig)
    proxy = TcpProxy.to(kube_crds.server)
    slow = str(kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path))

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted()

    with (
        proxy,
        SyncClient(lambda: KubernetesStore(ns, kubeconfig=cfg)) as holder,
        SyncClient(lambda: KubernetesStore(ns, kubeconfig=slow)) as waiter,
    ):
        permit = holder.acquire_semaphore("cut", 1, ttl=30)
        store = KubernetesStore(ns, kubeconfig=cfg)

        def queue() -> list[Any]:
            obj = holder._call(lambda: store.get(SEMAPHORE, "cut"))
            return list(obj.status.get("queue") or [])

        def cut_in() -> None:
            """Once the ticket is queued: slow the waiter's connection, then interrupt."""
            for _ in range(600):
                if queue():
                    break
                time.sleep(0.05)
            proxy.delay(1.0)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGALRM)

        previous = signal.signal(signal.SIGALRM, interrupt)
        helper = threading.Thread(target=cut_in)
        try:
            helper.start()
            with pytest.raises(_Interrupted):
                waiter.acquire_semaphore("cut", ttl=30, timeout=60)
            left = queue()  # right after it raised, from a connection of its own
        finally:
            helper.join(60)
            signal.signal(signal.SIGALRM, previous)
            proxy.pass_through()
        try:
            status = holder._call(lambda: store.get(SEMAPHORE, "cut"))
        finally:
            holder._call(store.close)
        assert left == []  # the ticket was withdrawn before the call raised
        assert [h["token"] for h in status.status["holders"]] == [permit.token]
        permit.release()
