"""Expiry, skew and renewal deadlines, exactly, with a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from konductor import Client, SemaphoreLost
from konductor._engine._clock import settle
from konductor.store import SEMAPHORE, MemoryStore
from konductor.testing import FakeClock, simulate_crash
from tests.support.fakes import FlakyStore


async def test_a_dead_holder_expires_exactly_after_a_full_ttl_as_observed() -> None:
    store, clock = MemoryStore(), FakeClock()
    dead, alive = Client(store, clock=clock), Client(store, clock=clock)
    await dead.acquire_semaphore("s", permits=1, ttl=10)
    simulate_crash(dead)
    waiter = asyncio.ensure_future(alive.acquire_semaphore("s", ttl=10))
    await settle()  # the waiter has seen the holder for the first time now
    await clock.advance(9.9)
    assert not waiter.done()
    await clock.advance(0.2)
    permit = await asyncio.wait_for(waiter, 5)
    assert permit.token == 2


async def test_skewed_wall_clocks_neither_steal_nor_freeze() -> None:
    store = MemoryStore()
    holder_clock, observer_clock = FakeClock(), FakeClock()
    # The holder's wall clock is an hour behind, the observer's a day ahead: the
    # holder's renewedAt timestamps look ancient, yet nothing is taken early.
    holder_clock.set_wall(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    observer_clock.set_wall(dt.datetime(2026, 1, 2, 1, tzinfo=dt.UTC))
    holder = Client(store, clock=holder_clock)
    observer = Client(store, clock=observer_clock)
    permit = await holder.acquire_semaphore("skew", permits=1, ttl=10)
    waiter = asyncio.ensure_future(observer.acquire_semaphore("skew", ttl=10))
    for _ in range(10):  # the holder keeps renewing: 30 s pass, the observer never takes it
        await holder_clock.advance(3)
        await observer_clock.advance(3)
    assert not waiter.done()
    assert not permit.is_lost
    await permit.release()
    granted = await asyncio.wait_for(waiter, 5)  # released: handed over at once
    assert granted.token > permit.token
    # And a holder that stops renewing is not frozen forever by skew either.
    simulate_crash(observer)
    other = Client(store, clock=holder_clock)
    late = asyncio.ensure_future(other.acquire_semaphore("skew", ttl=10))
    await settle()
    await holder_clock.advance(10.1)
    assert (await asyncio.wait_for(late, 5)).token > granted.token


async def test_renewals_happen_about_every_third_of_the_ttl() -> None:
    store, clock = MemoryStore(), FakeClock()
    client = Client(store, clock=clock)
    await client.acquire_semaphore("r", permits=1, ttl=9)
    assert client._rt.renewer.renewals == 0
    await clock.advance(3.01)
    assert client._rt.renewer.renewals == 1
    await clock.advance(30)
    assert client._rt.renewer.renewals >= 10


async def test_a_holder_that_cannot_renew_is_lost_at_its_own_deadline() -> None:
    store, clock = FlakyStore(), FakeClock()
    client = Client(store, clock=clock)
    body_cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def guarded() -> None:
        async with client.semaphore("d", permits=1, ttl=9):
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                body_cancelled.set()
                raise

    task = asyncio.ensure_future(guarded())
    await asyncio.wait_for(entered.wait(), 5)
    store.down = True  # from now on every renewal fails
    # The holder gives up at 90% of the TTL after its last successful renewal
    # was sent, strictly before anyone else may reclaim the entry (100%).
    await clock.advance(8.0)
    assert not task.done()  # retrying, still within the deadline
    await clock.advance(0.2)
    with pytest.raises(SemaphoreLost, match="not renewed within its TTL"):
        await asyncio.wait_for(task, 5)
    assert body_cancelled.is_set()


async def test_a_dead_waiter_does_not_block_the_queue() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder, alive = Client(store, clock=clock), Client(store, clock=clock)
    permit = await holder.acquire_semaphore("q", permits=1, ttl=10)
    # A waiter's process was killed: its queue ticket stays, and is never renewed.
    obj = await store.get(SEMAPHORE, "q")
    ticket = {
        "id": "dead",
        "holder": "killed-pod",
        "count": 1,
        "mode": "exclusive",
        "ttlSeconds": 10,
        "renewals": 0,
        "renewedAt": "2026-01-01T00:00:00.000000Z",
    }
    status = {**obj.status, "queue": [ticket], "waiting": 1}
    await store.replace_status(SEMAPHORE, "q", status, version=obj.version)
    alive_wait = asyncio.ensure_future(alive.acquire_semaphore("q", ttl=10))
    await settle()
    await permit.release()
    await settle()
    assert not alive_wait.done()  # FIFO: the dead ticket ahead is still respected...
    await clock.advance(9.5)
    assert not alive_wait.done()
    await clock.advance(0.6)
    granted = await asyncio.wait_for(alive_wait, 5)  # ...only until it expires
    assert granted.token > permit.token
    final = await store.get(SEMAPHORE, "q")
    assert [q["id"] for q in final.status["queue"]] == []


async def test_a_holder_whose_object_is_deleted_loses_at_its_next_renewal() -> None:
    # An operator's reset (`konductor delete semaphore s`): the grant is gone for good,
    # so the holder loses it at once, not after failing to renew until its deadline.
    store, clock = MemoryStore(), FakeClock()
    client = Client(store, clock=clock)
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def hold() -> None:
        async with client.semaphore("s", permits=1, ttl=9):
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    task = asyncio.ensure_future(hold())
    await asyncio.wait_for(entered.wait(), 5)
    await store.delete(SEMAPHORE, "s")
    await clock.advance(3.1)  # one renewal period (ttl/3), far before the 8.1 s deadline
    with pytest.raises(SemaphoreLost, match="was deleted"):
        await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    await client.close()
