"""The decorators on every kind of callable, on memory and the real API server."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from konductor import InvalidArgument, InvalidName, MemoryStore
from konductor._client import Client
from konductor._decorators import with_mutex, with_semaphore
from konductor._defaults import configure, default_client, default_sync_client
from konductor._sync import SyncClient
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace


@pytest.fixture(autouse=True)
def memory_default() -> Iterator[None]:
    configure(store=MemoryStore)
    yield
    configure()


def held_async(name: str) -> Any:
    async def check() -> bool:
        return await default_client().try_acquire_semaphore(name) is None

    return check()


def held_sync(name: str) -> bool:
    return default_sync_client().try_acquire_semaphore(name) is None


@with_semaphore("plain-async", permits=1)
async def plain_async(x: int, *, y: int = 2) -> int:
    assert await held_async("plain-async")
    return x + y


@with_semaphore("plain-sync", permits=1)
def plain_sync(x: int, *, y: int = 2) -> int:
    assert held_sync("plain-sync")
    return x + y


class Service:
    factor = 10

    @with_semaphore("method-sync", permits=1)
    def method(self, x: int) -> int:
        assert held_sync("method-sync")
        return x * self.factor

    @with_semaphore("method-async", permits=1)
    async def amethod(self, x: int) -> int:
        assert await held_async("method-async")
        return x * self.factor

    @with_semaphore("class-sync", permits=1)
    @classmethod
    def cmethod(cls, x: int) -> int:
        assert held_sync("class-sync")
        return x * cls.factor

    @with_semaphore("class-async", permits=1)
    @classmethod
    async def acmethod(cls, x: int) -> int:
        assert await held_async("class-async")
        return x * cls.factor

    @with_mutex("static-sync")
    @staticmethod
    def smethod(x: int) -> int:
        return x + 1

    @with_mutex("static-async")
    @staticmethod
    async def asmethod(x: int) -> int:
        return x + 2


async def test_async_callables_hold_the_grant_while_running() -> None:
    assert await plain_async(1, y=3) == 4
    assert await Service().amethod(2) == 20
    assert await Service.acmethod(3) == 30
    assert await Service.asmethod(1) == 3
    # Released afterwards.
    assert await default_client().try_acquire_semaphore("plain-async") is not None


def test_sync_callables_hold_the_grant_while_running() -> None:
    assert plain_sync(1, y=3) == 4
    assert Service().method(2) == 20
    assert Service.cmethod(3) == 30
    assert Service.smethod(1) == 2
    assert default_sync_client().try_acquire_semaphore("plain-sync") is not None


def test_metadata_is_preserved() -> None:
    assert inspect.iscoroutinefunction(plain_async)
    assert not inspect.iscoroutinefunction(plain_sync)
    assert inspect.iscoroutinefunction(Service().amethod)
    assert inspect.iscoroutinefunction(Service.acmethod)
    assert str(inspect.signature(plain_async)) == "(x: 'int', *, y: 'int' = 2) -> 'int'"
    assert plain_sync.__wrapped__.__name__ == "plain_sync"  # type: ignore[attr-defined]
    assert plain_sync.__name__ == "plain_sync"
    assert plain_sync.__doc__ is None


async def test_exceptions_propagate_and_release() -> None:
    @with_semaphore("boom", permits=1)
    async def boom() -> None:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        await boom()
    assert await default_client().try_acquire_semaphore("boom") is not None


def test_bad_arguments_fail_at_decoration_time() -> None:
    with pytest.raises(InvalidName):
        with_semaphore("Bad_Name", permits=1)
    with pytest.raises(InvalidArgument, match="permits must be at least 1"):
        with_semaphore("x", permits=0)
    with pytest.raises(InvalidArgument, match="ttl must be positive"):
        with_mutex("x", ttl=-1)


async def test_the_wrong_kind_of_client_is_a_clear_error() -> None:
    sync = SyncClient(MemoryStore)

    @with_semaphore("wrong", permits=1, client=sync)
    async def f() -> None:
        pass

    with pytest.raises(InvalidArgument, match="SyncClient"):
        await f()
    sync.close()

    @with_semaphore("wrong", permits=1, client=Client(MemoryStore()))
    def g() -> None:
        pass

    with pytest.raises(InvalidArgument, match="async"):
        g()


@pytest.mark.kubernetes
def test_a_long_sync_function_keeps_its_permit(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)

    def store() -> KubernetesStore:
        return KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)

    configure(store=store)
    other = SyncClient(store)
    seen: list[bool] = []

    @with_semaphore("long-job", permits=1, ttl=1.5)
    def job() -> str:
        for _ in range(5):  # 5 s: more than 3 TTLs
            time.sleep(1)
            seen.append(other.try_acquire_semaphore("long-job", ttl=1.5) is None)
        return "done"

    assert job() == "done"
    assert seen == [True] * 5  # nobody else could enter at any point
    assert other.try_acquire_semaphore("long-job", ttl=1.5) is not None
    other.close()


@pytest.mark.kubernetes
async def test_async_decorator_on_the_real_server(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    configure(store=lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig))
    inside = peak = 0

    @with_semaphore("async-job", permits=2, timeout=60)
    async def job() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.05)
        inside -= 1

    await asyncio.gather(*(job() for _ in range(8)))
    assert peak == 2
    await default_client().close()


async def test_once_lease_and_barrier_decorators_async() -> None:
    from konductor import barrier, once, with_lease

    runs: list[int] = []

    @once("init-async")
    async def init(n: int) -> int:
        runs.append(n)
        await asyncio.sleep(0.05)
        return n * 10

    results = await asyncio.gather(init(1), init(2), init(3))
    assert len(runs) == 1
    assert sorted(r for r in results if r is not None) == [runs[0] * 10]
    assert results.count(None) == 2
    assert await init(4) is None  # done: never again

    @with_lease("leader-async", ttl=5)
    async def lead() -> bool:
        return await default_client().try_acquire_lease("leader-async", ttl=5) is None

    assert await lead()

    @barrier("start-async", expected=1, timeout=5)
    async def start() -> str:
        return "started"

    assert await start() == "started"
    info = await default_client().barrier_status("start-async")
    assert info.open


def test_once_and_barrier_decorators_sync() -> None:
    from konductor import barrier, once

    runs: list[str] = []

    @once("init-sync")
    def init() -> str:
        runs.append("ran")
        return "result"

    assert init() == "result"
    assert init() is None
    assert runs == ["ran"]

    @barrier("start-sync", expected=1)
    def start() -> int:
        return 7

    assert start() == 7


SCRIPT_ALL_DECORATORS = """
import asyncio, sys
import konductor

@konductor.with_semaphore("exports", permits=2)
async def export():
    return "exported"

@konductor.with_mutex("reindex")
async def reindex():
    return "reindexed"

@konductor.with_lease("scheduler", ttl=5)
async def lead():
    return "led"

@konductor.once("migrations")
async def migrate():
    return "migrated"

@konductor.barrier("start", expected=1)
async def start():
    return "started"

print(asyncio.run(export()), asyncio.run(reindex()), asyncio.run(lead()),
      asyncio.run(migrate()), asyncio.run(start()))
"""


def _run_script(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT_ALL_DECORATORS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_async_decorators_work_under_asyncio_run_and_exit_clean(tmp_path: Path) -> None:
    # The user's first try: decorate, then asyncio.run(f()) from plain code,
    # one new loop per call. Each call's client is closed with its loop.
    done = _run_script({"KONDUCTOR_STORE": f"local:{tmp_path / 'k.db'}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exported", "reindexed", "led", "migrated", "started"]
    assert done.stderr == ""


@pytest.mark.kubernetes
def test_async_decorators_under_asyncio_run_close_their_kubernetes_sessions(
    kube_crds: Any,
) -> None:
    # Without closing the loop's default client, aiohttp prints "Unclosed client
    # session" / "Unclosed connector" when the loop's objects are collected.
    ns = fresh_namespace(kube_crds)
    done = _run_script(
        {
            "KONDUCTOR_STORE": "kubernetes",
            "KUBECONFIG": str(kube_crds.admin_kubeconfig),
            "KONDUCTOR_NAMESPACE": ns,
        }
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exported", "reindexed", "led", "migrated", "started"]
    assert "Unclosed" not in done.stderr, done.stderr
    assert done.stderr == ""


def test_configure_does_not_close_a_client_that_a_running_coroutine_uses() -> None:
    # configure() drops the default clients; one still in use on a running loop
    # keeps working, and is closed when that loop shuts down.
    seen: list[Client] = []

    async def main() -> None:
        client = default_client()
        seen.append(client)
        permit = await client.acquire_semaphore("in-use", 1)
        configure(store=MemoryStore)
        for _ in range(5):
            await asyncio.sleep(0)  # let a (wrong) finalizer-driven close run, if any
        import gc

        gc.collect()
        await asyncio.sleep(0.01)
        assert not permit.is_lost
        other = await client.try_acquire_semaphore("other", 1)  # the old client still works
        assert other is not None
        await other.release()
        await permit.release()
        assert default_client() is not client

    asyncio.run(main())
    from konductor import ClientClosed

    with pytest.raises(ClientClosed):  # closed with its loop
        asyncio.run(seen[0].try_acquire_semaphore("in-use", 1))


async def test_decorators_queue_with_their_priority() -> None:
    """The priority given to the decorator is the one its waiters queue with."""
    from konductor.store import MUTEX, SEMAPHORE

    store = MemoryStore()
    async with Client(store) as holder_client, Client(store) as waiter_client:
        permit = await holder_client.acquire_semaphore("ranked", 1)
        lock = await holder_client.acquire_mutex("ranked-m")

        @with_semaphore("ranked", priority=7, timeout=30, client=waiter_client)
        async def gated() -> str:
            return "gated"

        @with_mutex("ranked-m", priority=-3, timeout=30, client=waiter_client)
        async def locked() -> str:
            return "locked"

        calls = [asyncio.ensure_future(gated()), asyncio.ensure_future(locked())]
        for kind, name, want in ((SEMAPHORE, "ranked", 7), (MUTEX, "ranked-m", -3)):
            for _ in range(200):
                queue = (await store.get(kind, name)).status.get("queue") or []
                if queue:
                    break
                await asyncio.sleep(0.01)
            assert [t.get("priority") for t in queue] == [want]
        await permit.release()
        await lock.release()
        assert await asyncio.gather(*calls) == ["gated", "locked"]


def test_a_bad_priority_fails_at_decoration() -> None:
    with pytest.raises(InvalidArgument, match="priority must be from -100 to 100"):
        with_semaphore("x", permits=1, priority=101)
    with pytest.raises(InvalidArgument, match="priority must be an integer"):
        with_mutex("x", priority="high")  # type: ignore[arg-type]
