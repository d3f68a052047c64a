"""A holder whose network hangs stops on time, before anyone else is granted.

The holder reaches the real API server through a fault proxy; at a random moment
while it holds, the proxy stops answering (``blackhole``: nothing forwarded; or
``half_open``: requests arrive, answers never come back). The witness is the
test's own monotonic timestamps, taken outside konductor: when the holder's body
was cancelled, and when a rival (a separate client with its own connection) was
granted. Safety: the cancellation comes first. Promptness: it comes within 90%
of the TTL of the cut (the last successful renewal was before it) plus a
scheduling margin. Then the network heals and the holder recovers; nothing is
left behind in the object.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, LostError
from konductor._primitives._hub import WRITE_FLOOR
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes

TTL = 3
#: Event-loop scheduling slack allowed on top of the holder's own deadline.
MARGIN = 1.0

Hold = Callable[[Client, str, float | None], AbstractAsyncContextManager[Any]]

# (the holder's grant, a rival's conflicting grant)
KINDS: dict[str, tuple[Hold, Hold]] = {
    "semaphore": (
        lambda c, n, t: c.semaphore(n, permits=1, ttl=TTL, timeout=t),
        lambda c, n, t: c.semaphore(n, permits=1, ttl=TTL, timeout=t),
    ),
    "mutex": (
        lambda c, n, t: c.mutex(n, ttl=TTL, timeout=t),
        lambda c, n, t: c.mutex(n, ttl=TTL, timeout=t),
    ),
    "read_lock": (
        lambda c, n, t: c.read_lock(n, ttl=TTL, timeout=t),
        lambda c, n, t: c.write_lock(n, ttl=TTL, timeout=t),
    ),
    "write_lock": (
        lambda c, n, t: c.write_lock(n, ttl=TTL, timeout=t),
        lambda c, n, t: c.read_lock(n, ttl=TTL, timeout=t),
    ),
    "lease": (
        lambda c, n, t: c.lease(n, ttl=TTL, timeout=t),
        lambda c, n, t: c.lease(n, ttl=TTL, timeout=t),
    ),
}


@pytest.mark.parametrize("mode", ["blackhole", "half_open"])
@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_cut_off_holder_stops_before_anyone_else_is_granted(
    kube_crds: Any, tmp_path: Path, kind: str, mode: str
) -> None:
    hold, rival_hold = KINDS[kind]
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    # The holder's store has the default timeouts: the bound must not depend on tuning.
    cut_off = KubernetesStore(ns, kubeconfig=cfg)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    seen: dict[str, float] = {}
    entered = asyncio.Event()
    name = f"bh-{kind.replace('_', '-')}"

    async def holder_body(holder: Client) -> None:
        with pytest.raises(LostError) as info:
            async with hold(holder, name, 30):
                entered.set()
                try:
                    await asyncio.sleep(120)
                    seen["finished"] = time.monotonic()  # must never happen
                except asyncio.CancelledError:
                    seen["cancelled"] = time.monotonic()
                    raise
        seen["raised"] = time.monotonic()
        assert "not renewed within its TTL" in str(info.value)

    try:
        async with Client(cut_off) as holder, Client(direct) as rival:
            task = asyncio.ensure_future(holder_body(holder))
            await asyncio.wait_for(entered.wait(), 30)
            # A random moment while it holds, before, during or after a renewal.
            await asyncio.sleep(random.uniform(0.0, TTL / 3 * 1.2))
            getattr(proxy, mode)()
            seen["cut"] = time.monotonic()
            async with rival_hold(rival, name, 60) as other:
                seen["rival"] = time.monotonic()
                rival_token = other.token
            await asyncio.wait_for(task, 30)
            print(
                f"\n{kind} {mode}: cut->loss {seen['cancelled'] - seen['cut']:.3f}s, "
                f"cut->rival granted {seen['rival'] - seen['cut']:.3f}s"
            )
            assert "finished" not in seen
            # Safety: the holder's body was cancelled before the rival was granted.
            assert seen["cancelled"] < seen["rival"]
            # On its own clock, whatever its requests were doing.
            assert seen["cancelled"] - seen["cut"] <= 0.9 * TTL + MARGIN
            # The LostError is raised at once: no hanging release delays it.
            assert seen["raised"] - seen["cancelled"] < MARGIN

            # The network heals: the same client is granted again, with a newer token.
            proxy.pass_through()
            async with hold(holder, name, 60) as again:
                assert again.token > rival_token
        # Nothing left behind: no holder, no ticket.
        await _assert_empty(direct, kind, name)
    finally:
        proxy.close()
        await direct.close()


async def _assert_empty(store: KubernetesStore, kind: str, name: str) -> None:
    from konductor.store import LEASE, MUTEX, RWMUTEX, SEMAPHORE

    kinds = {
        "semaphore": SEMAPHORE,
        "mutex": MUTEX,
        "read_lock": RWMUTEX,
        "write_lock": RWMUTEX,
        "lease": LEASE,
    }
    obj = await store.get(kinds[kind], name)
    if kind == "lease":
        assert not obj.spec.get("holderIdentity")
        return
    assert obj.status.get("holders") == []
    assert obj.status.get("queue") == []


async def test_a_cut_off_once_runner_is_cancelled_before_another_caller_runs_it(
    kube_crds: Any, tmp_path: Path
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    cut_off = KubernetesStore(ns, kubeconfig=cfg)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    seen: dict[str, float] = {}
    started = asyncio.Event()

    async def first() -> str:
        started.set()
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            seen["cancelled"] = time.monotonic()
            raise
        return "first"

    async def second() -> str:
        seen["second"] = time.monotonic()
        return "second"

    try:
        async with Client(cut_off) as runner, Client(direct) as other:
            task = asyncio.ensure_future(runner.once("bh-once", first, ttl=TTL))
            await asyncio.wait_for(started.wait(), 30)
            await asyncio.sleep(random.uniform(0.0, TTL / 3 * 1.2))
            proxy.blackhole()
            seen["cut"] = time.monotonic()
            assert await other.once("bh-once", second, ttl=TTL, timeout=60) == "second"
            with pytest.raises(LostError):
                await asyncio.wait_for(task, 30)
            print(
                f"\nonce blackhole: cut->loss {seen['cancelled'] - seen['cut']:.3f}s, "
                f"cut->other ran {seen['second'] - seen['cut']:.3f}s"
            )
            assert seen["cancelled"] < seen["second"]
            assert seen["cancelled"] - seen["cut"] <= 0.9 * TTL + MARGIN
            proxy.pass_through()
            status = await runner.once_status("bh-once")
            assert status.state == "Done"
    finally:
        proxy.close()
        await direct.close()


async def test_a_waiter_whose_connections_went_silent_is_still_granted(
    kube_crds: Any, tmp_path: Path
) -> None:
    """A waiter's watch and pooled connections die silently (``stall``); it is not stuck."""
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    waiting_store = KubernetesStore(ns, kubeconfig=cfg)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    try:
        async with Client(direct) as holder, Client(waiting_store) as waiter:
            held = await holder.acquire_semaphore("bh-wait", permits=1, ttl=TTL)
            queued = asyncio.ensure_future(
                waiter.acquire_semaphore("bh-wait", permits=1, ttl=TTL, timeout=60)
            )
            # Queued (its ticket is in the object) and watching.
            for _ in range(100):
                obj = await direct.get(held._entry.hub.kind, "bh-wait")
                if obj.status.get("queue"):
                    break
                await asyncio.sleep(0.05)
            assert obj.status.get("queue")
            proxy.stall()  # its watch and keep-alive connections now hang for good
            await asyncio.sleep(0.5)
            await held.release()
            released = time.monotonic()
            permit = await asyncio.wait_for(queued, 60)
            waited = time.monotonic() - released
            print(f"\nstalled waiter granted {waited:.3f}s after the release")
            assert permit.token > held.token
            # Within about one TTL (its ticket renewal or replacement notices), not the
            # minutes a dead watch could take to time out.
            assert waited < 2 * TTL + MARGIN
            await permit.release()
        await _assert_empty(direct, "semaphore", "bh-wait")
    finally:
        proxy.close()
        await direct.close()


async def test_closing_a_cut_off_client_is_bounded_by_its_grants_deadlines(
    kube_crds: Any, tmp_path: Path
) -> None:
    """Releases at close run together and give up at each grant's own deadline."""
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    try:
        client = Client(KubernetesStore(ns, kubeconfig=cfg))
        held = [
            await client.acquire_semaphore("bh-close", permits=3, ttl=TTL),
            await client.acquire_semaphore("bh-close", permits=3, ttl=TTL),
            await client.acquire_mutex("bh-close", ttl=TTL),
            await client.acquire_lease("bh-close", ttl=TTL),
        ]
        assert len(held) == 4
        proxy.blackhole()
        start = time.monotonic()
        await asyncio.wait_for(client.close(), 60)
        took = time.monotonic() - start
        print(f"\nclose of a cut-off client holding 4 grants took {took:.3f}s")
        # At most the latest deadline (0.9 x ttl after a renewal) or WRITE_FLOOR,
        # not one 30 s request budget per grant.
        assert took <= 0.9 * TTL + WRITE_FLOOR + MARGIN
    finally:
        proxy.close()
        await direct.close()
