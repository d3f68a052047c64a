"""Lease expiry, skew, renewal and loss, exactly, with a fake clock (no sleeping).

Each client gets its own switchable connection (:class:`Outage`) to one shared
memory store and its own :class:`FakeClock`, so that one client can lose the
network, or run with a skewed wall clock, while the others do not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from konductor import Client, LeaseLost
from konductor._engine._clock import settle
from konductor._primitives._lease import Lease
from konductor.store import LEASE, MemoryStore
from konductor.testing import FakeClock, simulate_crash
from tests.primitives.lease_helpers import MICRO_TIME, Leaders, Outage

OTHER = "go-elector_6b1f"


def make(store: MemoryStore, clock: FakeClock, name: str) -> tuple[Client, Outage]:
    conn = Outage(store)
    return Client(conn, identity=name, clock=clock), conn


async def advance(clocks: list[FakeClock], seconds: float, step: float = 0.5) -> None:
    """Move every client's clock together, in small steps (each client renews on its own)."""
    left = seconds
    while left > 1e-9:
        delta = min(step, left)
        for c in clocks:
            await c.advance(delta)
        left -= delta


def foreign(
    transitions: int = 4, duration: int = 10, renew: str = "1970-01-01T00:00:00.000000Z"
) -> dict[str, Any]:
    return {
        "holderIdentity": OTHER,
        "leaseDurationSeconds": duration,
        "acquireTime": renew,
        "renewTime": renew,
        "leaseTransitions": transitions,
    }


async def test_a_foreign_holder_expires_exactly_a_full_duration_after_first_seen() -> None:
    store, clock = MemoryStore(), FakeClock()
    # An ancient renewTime means nothing: expiry is judged on the observer's clock only.
    await store.create(LEASE, "l", foreign())
    client, _ = make(store, clock, "me")
    waiter = asyncio.ensure_future(client.acquire_lease("l", ttl=5))
    await settle()  # the candidate has seen the record for the first time now
    await clock.advance(9.9)
    assert not waiter.done()
    await clock.advance(0.2)
    lease = await asyncio.wait_for(waiter, 5)
    assert lease.token == 5  # leaseTransitions incremented on take-over
    spec = (await store.get(LEASE, "l")).spec
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 5
    assert spec["leaseDurationSeconds"] == 5
    assert re.match(MICRO_TIME, spec["renewTime"])
    assert re.match(MICRO_TIME, spec["acquireTime"])
    await client.close()


async def test_each_foreign_renewal_restarts_the_observation() -> None:
    store, clock = MemoryStore(), FakeClock()
    obj = await store.create(LEASE, "l", foreign())
    client, _ = make(store, clock, "me")
    waiter = asyncio.ensure_future(client.acquire_lease("l"))
    await settle()
    for i in range(5):  # the Go holder renews every 8 s, for 40 s
        await clock.advance(8)
        spec = {**obj.spec, "renewTime": f"1970-01-01T00:00:{i + 1:02d}.000000Z"}
        obj = await store.replace_spec(LEASE, "l", spec, version=obj.version)
        await settle()
        assert not waiter.done()
    await clock.advance(9.9)  # then stops: 10 s after its last renewal was seen, not before
    assert not waiter.done()
    await clock.advance(0.2)
    assert (await asyncio.wait_for(waiter, 5)).token == 5
    await client.close()


async def test_a_released_lease_is_taken_at_once_without_time_passing() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder, _ = make(store, clock, "holder")
    waiter_client, conn = make(store, clock, "waiter")
    lease = await holder.acquire_lease("l", ttl=30)
    assert lease.token == 0  # client-go creates a Lease with leaseTransitions 0
    waiter = asyncio.ensure_future(waiter_client.acquire_lease("l", ttl=30))
    await settle()
    calls_before = sum(conn.calls.values())
    await advance([clock], 25)  # a long wait while the holder renews ...
    assert not waiter.done()
    # ... costs the waiter no request at all: it sleeps on the watch, no polling.
    assert sum(conn.calls.values()) == calls_before
    await lease.release()
    granted = await asyncio.wait_for(waiter, 5)  # no clock advance needed: watch-driven
    assert granted.token == 1
    await holder.close()
    await waiter_client.close()


async def test_skewed_wall_clocks_neither_steal_nor_freeze() -> None:
    store = MemoryStore()
    holder_clock, observer_clock = FakeClock(), FakeClock()
    # The holder's wall clock is decades behind, the observer's a year ahead: the
    # holder's renewTime looks long expired to a wall-clock reader, yet nothing is taken.
    holder_clock.set_wall(dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    observer_clock.set_wall(dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    holder, _ = make(store, holder_clock, "holder")
    observer, _ = make(store, observer_clock, "observer")
    lease = await holder.acquire_lease("skew", ttl=10)
    waiter = asyncio.ensure_future(observer.acquire_lease("skew", ttl=10))
    await settle()
    await advance([holder_clock, observer_clock], 60)
    assert not waiter.done()
    assert not lease.is_lost
    # Right after a renewal, the holder crashes (stops renewing, releases nothing):
    # it is not frozen by skew either.
    renewals = holder._rt.renewer.renewals
    while holder._rt.renewer.renewals == renewals:
        await advance([holder_clock, observer_clock], 0.05, step=0.05)
    simulate_crash(holder)
    await advance([observer_clock], 9.5)  # < a full duration since its last renewal was seen
    assert not waiter.done()
    await advance([observer_clock], 0.6)
    taken = await asyncio.wait_for(waiter, 5)
    assert taken.token == lease.token + 1
    await observer.close()


async def test_renew_time_advances_about_every_third_of_the_ttl() -> None:
    store, clock = MemoryStore(), FakeClock()
    client, _ = make(store, clock, "me")
    await client.acquire_lease("r", ttl=9)
    first = (await store.get(LEASE, "r")).spec
    await clock.advance(2.5)
    assert (await store.get(LEASE, "r")).spec == first  # 9 * 0.85 / 3 > 2.5: not yet
    await clock.advance(0.6)
    renewed = (await store.get(LEASE, "r")).spec
    assert renewed["renewTime"] > first["renewTime"]
    assert renewed["acquireTime"] == first["acquireTime"]
    assert renewed["leaseTransitions"] == first["leaseTransitions"]
    assert client._rt.renewer.renewals == 1
    await advance([clock], 30)
    assert client._rt.renewer.renewals >= 10
    await client.close()


async def test_a_leader_that_cannot_renew_is_lost_before_anyone_can_take_over() -> None:
    store = MemoryStore()
    leader_clock, other_clock = FakeClock(), FakeClock()
    leader, conn = make(store, leader_clock, "leader")
    other, _ = make(store, other_clock, "other")
    entered, body_cancelled = asyncio.Event(), asyncio.Event()
    taken: list[Lease] = []

    async def guarded() -> None:
        async with leader.lease("d", ttl=10) as lease:
            taken.append(lease)
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                body_cancelled.set()
                raise

    task = asyncio.ensure_future(guarded())
    await asyncio.wait_for(entered.wait(), 5)
    waiter = asyncio.ensure_future(other.acquire_lease("d", ttl=10))
    await settle()
    conn.down = True  # from now on every renewal fails; the last one was sent at t=0
    clocks = [leader_clock, other_clock]
    await advance(clocks, 8.9, step=0.1)
    assert not task.done()  # retrying, within its own deadline (90% of the duration)
    await advance(clocks, 0.2, step=0.1)
    with pytest.raises(LeaseLost, match="not renewed"):
        await asyncio.wait_for(task, 5)
    assert body_cancelled.is_set()
    assert not waiter.done()  # the old leader gave up first; nobody has taken over yet
    await advance(clocks, 0.8, step=0.1)
    assert not waiter.done()  # 9.9 s since the last renewal was seen
    await advance(clocks, 0.2, step=0.1)
    new = await asyncio.wait_for(waiter, 5)
    assert new.token == taken[0].token + 1
    await other.close()
    conn.down = False
    await leader.close()


async def test_tasks_of_one_client_take_turns() -> None:
    store, clock = MemoryStore(), FakeClock()
    client, _ = make(store, clock, "me")
    first = await client.acquire_lease("l")
    # The Lease records one identity per client, so a second task of the same
    # client must not mistake the record for its own: it waits, locally.
    assert await client.try_acquire_lease("l") is None
    second = asyncio.ensure_future(client.acquire_lease("l"))
    await advance([clock], 60)
    assert not second.done()
    await first.release()
    lease = await asyncio.wait_for(second, 5)
    assert lease.token == first.token + 1
    await client.close()


async def test_campaign_one_leader_and_takeover_when_the_leader_loses_its_network() -> None:
    store = MemoryStore()
    clocks = [FakeClock() for _ in range(3)]
    made = [make(store, clocks[i], f"c{i}") for i in range(3)]
    leaders = Leaders()

    def leader_fn(who: str) -> Callable[[Lease], Awaitable[None]]:
        async def lead(lease: Lease) -> None:
            leaders.enter(who, lease.token)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                leaders.leave(who, cancelled=True)
                raise

        return lead

    tasks = [
        asyncio.ensure_future(c.campaign("elect", leader_fn(c.identity), ttl=6)) for c, _ in made
    ]
    await settle()
    await advance(clocks, 30)
    assert len(leaders.current) == 1
    assert leaders.max == 1
    first = leaders.current[0]
    index = int(first[1:])
    made[index][1].down = True  # the leader alone loses the network
    for _ in range(80):
        await advance(clocks, 0.25, step=0.25)
        assert leaders.max == 1  # never two leaders, at any step
    assert first in leaders.cancelled  # its leader_fn was cancelled on loss
    assert len(leaders.current) == 1
    assert leaders.current[0] != first
    assert [t for _, t in leaders.history] == [0, 1]
    made[index][1].down = False  # back: it campaigns again, as a follower
    await advance(clocks, 30)
    assert leaders.max == 1
    assert len(leaders.history) == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert leaders.current == []
    spec = (await store.get(LEASE, "elect")).spec
    assert spec["holderIdentity"] == ""  # the last leader released on cancel
    for c, _ in made:
        await c.close()
