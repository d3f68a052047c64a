"""The blocking facade and the decorators when the holder's network hangs.

Synchronous code cannot be cancelled: what the SyncClient promises instead is
that ``permit.is_lost`` / ``ensure_held()`` report the loss on the holder's own
clock (90% of the TTL after its last confirmed renewal was sent), before any
other client is granted, and that the ``with`` exit raises the ``LostError``
at once instead of hanging on the dead connection. An async decorated
function's body is cancelled like an ``async with`` block; a sync one learns
of the loss at its exit.

The holder reaches the real API server through a fault proxy that is
blackholed (or made half-open: requests arrive, answers never come back) at a
random moment while it holds. The witness is the test's own
monotonic clock, read outside konductor: when the holder first saw the loss,
when a rival (a separate client with its own connection) was granted.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from konductor import (
    Client,
    LostError,
    MutexLost,
    OnceLost,
    SemaphoreLost,
    with_mutex,
    with_semaphore,
)
from konductor._sync import SyncClient
from konductor.store import MUTEX, SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes

TTL = 3
#: Scheduling slack on top of the holder's own deadline (threads, two loops).
MARGIN = 1.0


def _proxy_to(kube: Any) -> TcpProxy:
    host, port = kube.server.removeprefix("https://").rsplit(":", 1)
    return TcpProxy(host, int(port)).start()


def _random_moment() -> None:
    """Before, during or after a renewal (renewals run every ttl/3)."""
    time.sleep(random.uniform(0.0, TTL / 3 * 1.2))


class Rival:
    """Another client acquiring on a thread of its own; records when it was granted."""

    def __init__(self, client: SyncClient, acquire: str, name: str) -> None:
        self.granted_at: float | None = None
        self.token = 0
        self.error: BaseException | None = None

        def run() -> None:
            try:
                grant = getattr(client, acquire)(name, ttl=TTL, timeout=60)
                self.granted_at = time.monotonic()
                self.token = grant.token
                grant.release()
            except BaseException as exc:  # reported by join()
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> float:
        self._thread.join(70)
        assert self.error is None, self.error
        assert self.granted_at is not None
        return self.granted_at


def _wait_lost(grant: Any, limit: float = 30) -> float:
    """Poll the sync grant the way user code would, between steps of work."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            grant.ensure_held()
        except LostError:
            assert grant.is_lost
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError("the grant was never reported lost")


@pytest.mark.parametrize("mode", ["blackhole", "half_open"])
@pytest.mark.parametrize("kind", ["semaphore", "mutex"])
def test_a_cut_off_sync_holder_reports_the_loss_before_a_rival_is_granted(
    kube_crds: Any, tmp_path: Path, kind: str, mode: str
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = _proxy_to(kube_crds)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, f"https://127.0.0.1:{proxy.port}", tmp_path)
    name = f"sbh-{kind}"
    lost_error = SemaphoreLost if kind == "semaphore" else MutexLost
    seen: dict[str, float] = {}
    try:
        with (
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=cfg)) as holder,
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as rc,
        ):

            def hold() -> Any:
                if kind == "semaphore":
                    return holder.semaphore(name, permits=1, ttl=TTL, timeout=30)
                return holder.mutex(name, ttl=TTL, timeout=30)

            if kind == "semaphore":  # the object exists, so the rival may omit permits
                holder.acquire_semaphore(name, permits=1, ttl=TTL).release()
            acquire = "acquire_semaphore" if kind == "semaphore" else "acquire_mutex"
            with pytest.raises(lost_error) as info, hold() as grant:
                _random_moment()
                getattr(proxy, mode)()
                seen["cut"] = time.monotonic()
                rival = Rival(rc, acquire, name)
                seen["lost"] = _wait_lost(grant)
                seen["exit"] = time.monotonic()
            seen["raised"] = time.monotonic()
            seen["rival"] = rival.join()
            print(
                f"\nsync {kind} {mode}: cut->loss {seen['lost'] - seen['cut']:.3f}s, "
                f"cut->rival granted {seen['rival'] - seen['cut']:.3f}s, "
                f"exit raised in {seen['raised'] - seen['exit']:.3f}s"
            )
            assert "not renewed within its TTL" in str(info.value)
            # Safety: the holder knew before the rival was granted.
            assert seen["lost"] < seen["rival"]
            # On its own clock, whatever its requests were doing.
            assert seen["lost"] - seen["cut"] <= 0.9 * TTL + MARGIN
            # The exit does not hang on the blackholed connection.
            assert seen["raised"] - seen["exit"] < MARGIN

            # The network heals: the same client is granted again, with a newer token.
            proxy.pass_through()
            with hold() as again:
                assert again.token > rival.token
                again.ensure_held()
        _assert_empty(kube_crds, ns, kind, name)
    finally:
        proxy.close()


def _assert_empty(kube: Any, ns: str, kind: str, name: str) -> None:
    async def check() -> None:
        store = KubernetesStore(ns, kubeconfig=kube.admin_kubeconfig)
        try:
            obj = await store.get(SEMAPHORE if kind == "semaphore" else MUTEX, name)
            assert obj.status.get("holders") == []
            assert obj.status.get("queue") == []
        finally:
            await store.close()

    asyncio.run(check())


async def test_an_async_decorated_function_is_cancelled_before_a_rival_is_granted(
    kube_crds: Any, tmp_path: Path
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = _proxy_to(kube_crds)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, f"https://127.0.0.1:{proxy.port}", tmp_path)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    seen: dict[str, float] = {}
    entered = asyncio.Event()
    try:
        async with Client(KubernetesStore(ns, kubeconfig=cfg)) as holder, Client(direct) as rc:

            @with_semaphore("dbh", permits=1, ttl=TTL, timeout=30, client=holder)
            async def work() -> str:
                entered.set()
                try:
                    await asyncio.sleep(120)
                except asyncio.CancelledError:
                    seen["cancelled"] = time.monotonic()
                    raise
                return "finished"  # must never happen

            task = asyncio.ensure_future(work())
            await asyncio.wait_for(entered.wait(), 30)
            await asyncio.sleep(random.uniform(0.0, TTL / 3 * 1.2))
            proxy.blackhole()
            seen["cut"] = time.monotonic()
            async with rc.semaphore("dbh", ttl=TTL, timeout=60) as other:
                seen["rival"] = time.monotonic()
                rival_token = other.token
            with pytest.raises(SemaphoreLost):
                await asyncio.wait_for(task, 30)
            print(
                f"\nasync decorator blackhole: cut->loss {seen['cancelled'] - seen['cut']:.3f}s, "
                f"cut->rival granted {seen['rival'] - seen['cut']:.3f}s"
            )
            assert seen["cancelled"] < seen["rival"]
            assert seen["cancelled"] - seen["cut"] <= 0.9 * TTL + MARGIN

            proxy.pass_through()
            entered.clear()

            @with_semaphore("dbh", ttl=TTL, timeout=60, client=holder)
            async def quick() -> int:
                return 1

            assert await quick() == 1
            obj = await direct.get(SEMAPHORE, "dbh")
            assert obj.status["holders"] == []
            assert obj.status["queue"] == []
            assert int(obj.status["nextToken"]) > rival_token
    finally:
        proxy.close()
        await direct.close()


def test_a_sync_decorated_function_learns_of_the_loss_at_its_exit(
    kube_crds: Any, tmp_path: Path
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = _proxy_to(kube_crds)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, f"https://127.0.0.1:{proxy.port}", tmp_path)
    seen: dict[str, float] = {}
    try:
        with (
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=cfg)) as holder,
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as rc,
        ):

            @with_mutex("sdbh", ttl=TTL, timeout=30, client=holder)
            def work() -> str:
                _random_moment()
                proxy.blackhole()
                seen["cut"] = time.monotonic()
                rivals.append(Rival(rc, "acquire_mutex", "sdbh"))
                # Blocking work that does not look: it runs on past the loss.
                time.sleep(0.9 * TTL + MARGIN)
                seen["returned"] = time.monotonic()
                return "done"

            rivals: list[Rival] = []
            with pytest.raises(MutexLost):
                work()
            seen["raised"] = time.monotonic()
            rival_at = rivals[0].join()
            print(
                f"\nsync decorator blackhole: cut->rival granted {rival_at - seen['cut']:.3f}s, "
                f"return->raise {seen['raised'] - seen['returned']:.3f}s"
            )
            # The function's result is not trusted: its exit raises, without hanging.
            assert seen["raised"] - seen["returned"] < MARGIN
            proxy.pass_through()

            @with_mutex("sdbh", ttl=TTL, timeout=60, client=holder)
            def quick() -> int:
                return 1

            assert quick() == 1
        _assert_empty(kube_crds, ns, "mutex", "sdbh")
    finally:
        proxy.close()


def test_a_cut_off_sync_once_runner_raises_before_another_caller_runs_it(
    kube_crds: Any, tmp_path: Path
) -> None:
    """The blocking function cannot be stopped: its caller gets ``OnceLost`` in time.

    The function itself runs on in its worker thread until it returns (Python
    cannot interrupt a thread); its result is discarded.
    """
    ns = fresh_namespace(kube_crds)
    proxy = _proxy_to(kube_crds)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, f"https://127.0.0.1:{proxy.port}", tmp_path)
    seen: dict[str, float] = {}
    release_first = threading.Event()
    try:
        with (
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=cfg)) as runner,
            SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as oc,
        ):

            def first() -> str:
                _random_moment()
                proxy.blackhole()
                seen["cut"] = time.monotonic()
                release_first.wait(60)
                return "first"

            def second() -> str:
                seen["second"] = time.monotonic()
                return "second"

            def other() -> None:
                while "cut" not in seen:
                    time.sleep(0.01)
                assert oc.once("sbh-once", second, ttl=TTL, timeout=60) == "second"

            rival = threading.Thread(target=other, daemon=True)
            rival.start()
            with pytest.raises(OnceLost):
                runner.once("sbh-once", first, ttl=TTL)
            seen["lost"] = time.monotonic()
            rival.join(70)
            release_first.set()
            print(
                f"\nsync once blackhole: cut->loss {seen['lost'] - seen['cut']:.3f}s, "
                f"cut->other ran {seen['second'] - seen['cut']:.3f}s"
            )
            assert seen["lost"] < seen["second"]
            assert seen["lost"] - seen["cut"] <= 0.9 * TTL + MARGIN
            proxy.pass_through()
            assert runner.once_status("sbh-once").state == "Done"
    finally:
        release_first.set()
        proxy.close()
