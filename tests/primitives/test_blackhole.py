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
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, LostError
from konductor._engine._hub import WRITE_FLOOR
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


@dataclass
class Net:
    """A fresh namespace, a fault proxy to the API server, and a store that bypasses it."""

    ns: str
    proxy: TcpProxy
    kubeconfig: Path  # through the proxy
    direct: KubernetesStore  # not through it: the rival's and the witness's view

    def cut_off(self) -> KubernetesStore:
        """A store through the proxy, with the default timeouts (the bounds must not
        depend on tuning)."""
        return KubernetesStore(self.ns, kubeconfig=self.kubeconfig)


@pytest.fixture
async def net(kube_crds: Any, tmp_path: Path) -> AsyncIterator[Net]:
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    direct = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    try:
        cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
        yield Net(ns, proxy, cfg, direct)
    finally:
        proxy.close()
        await direct.close()


@pytest.mark.parametrize("mode", ["blackhole", "half_open"])
@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_cut_off_holder_stops_before_anyone_else_is_granted(
    net: Net, kind: str, mode: str
) -> None:
    hold, rival_hold = KINDS[kind]
    # The holder's store has the default timeouts: the bound must not depend on tuning.
    cut_off = net.cut_off()
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

    async with Client(cut_off) as holder, Client(net.direct) as rival:
        task = asyncio.ensure_future(holder_body(holder))
        await asyncio.wait_for(entered.wait(), 30)
        # A random moment while it holds, before, during or after a renewal.
        await asyncio.sleep(random.uniform(0.0, TTL / 3 * 1.2))
        getattr(net.proxy, mode)()
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
        net.proxy.pass_through()
        async with hold(holder, name, 60) as again:
            assert again.token > rival_token
    # Nothing left behind: no holder, no ticket.
    await _assert_empty(net.direct, kind, name)


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


async def test_a_cut_off_once_runner_is_cancelled_before_another_caller_runs_it(net: Net) -> None:
    cut_off = net.cut_off()
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

    async with Client(cut_off) as runner, Client(net.direct) as other:
        task = asyncio.ensure_future(runner.once("bh-once", first, ttl=TTL))
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(random.uniform(0.0, TTL / 3 * 1.2))
        net.proxy.blackhole()
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
        net.proxy.pass_through()
        status = await runner.once_status("bh-once")
        assert status.state == "Done"


async def test_a_waiter_whose_connections_went_silent_is_still_granted(net: Net) -> None:
    """A waiter's watch and pooled connections die silently (``stall``); it is not stuck."""
    waiting_store = net.cut_off()
    async with Client(net.direct) as holder, Client(waiting_store) as waiter:
        held = await holder.acquire_semaphore("bh-wait", permits=1, ttl=TTL)
        queued = asyncio.ensure_future(
            waiter.acquire_semaphore("bh-wait", permits=1, ttl=TTL, timeout=60)
        )
        # Queued (its ticket is in the object) and watching.
        for _ in range(100):
            obj = await net.direct.get(held._entry.hub.kind, "bh-wait")
            if obj.status.get("queue"):
                break
            await asyncio.sleep(0.05)
        assert obj.status.get("queue")
        net.proxy.stall()  # its watch and keep-alive connections now hang for good
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
    await _assert_empty(net.direct, "semaphore", "bh-wait")


async def test_closing_a_cut_off_client_is_bounded_by_its_grants_deadlines(net: Net) -> None:
    """Releases at close run together and give up at each grant's own deadline."""
    client = Client(net.cut_off())
    held = [
        await client.acquire_semaphore("bh-close", permits=3, ttl=TTL),
        await client.acquire_semaphore("bh-close", permits=3, ttl=TTL),
        await client.acquire_mutex("bh-close", ttl=TTL),
        await client.acquire_lease("bh-close", ttl=TTL),
    ]
    assert len(held) == 4
    net.proxy.blackhole()
    start = time.monotonic()
    await asyncio.wait_for(client.close(), 60)
    took = time.monotonic() - start
    print(f"\nclose of a cut-off client holding 4 grants took {took:.3f}s")
    # At most the latest deadline (0.9 x ttl after a renewal) or WRITE_FLOOR,
    # not one 30 s request budget per grant.
    assert took <= 0.9 * TTL + WRITE_FLOOR + MARGIN
