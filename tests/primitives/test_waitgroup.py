"""The wait group on every store: add / done / wait with real contention."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from konductor import Client, Conflict, InvalidArgument, InvalidName, NotFound, WaitTimeout
from konductor._engine._clock import settle
from konductor.store import WAITGROUP, Kind, MemoryStore, StoredObject
from konductor.testing import FakeClock
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def test_add_done_wait_and_status(clients: Clients, backend: Backend) -> None:
    a = clients()
    assert await a.waitgroup_add("batch", 3) == 3
    obj = await backend.store.get(WAITGROUP, "batch")
    assert obj.spec == {}
    assert obj.status["count"] == 3
    assert await a.waitgroup_done("batch") == 2
    assert await a.waitgroup_add("batch", -2) == 0
    info = await a.waitgroup_wait("batch", timeout=5)
    assert (info.count, info.drains) == (0, 1)
    assert await a.waitgroup_status("batch") == info
    assert (await backend.store.get(WAITGROUP, "batch")).status["count"] == 0


async def test_concurrent_adds_and_dones_count_exactly_and_wait_ends_after_the_last_done(
    clients: Clients, backend: Backend
) -> None:
    n = 4
    cs = [clients() for _ in range(n)]
    # 2n units added concurrently from n clients.
    counts = await asyncio.gather(*(cs[i % n].waitgroup_add("work") for i in range(2 * n)))
    assert sorted(counts) == list(range(1, 2 * n + 1))
    waiters = [asyncio.ensure_future(c.waitgroup_wait("work", timeout=60)) for c in cs[:2]]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    dones_started = 0  # a witness outside konductor
    started_when_passed: list[int] = []

    async def worker(c: Client) -> None:
        nonlocal dones_started
        await asyncio.sleep(random.uniform(0, 0.4))
        dones_started += 1
        await c.waitgroup_done("work")

    async def watch(waiter: asyncio.Future[Any]) -> None:
        await waiter
        started_when_passed.append(dones_started)

    await asyncio.gather(*(worker(cs[i % n]) for i in range(2 * n)), *map(watch, waiters))
    assert started_when_passed == [2 * n, 2 * n]  # nobody passed before the last done
    obj = await backend.store.get(WAITGROUP, "work")
    assert (obj.status["count"], obj.status["drains"]) == (0, 1)


async def test_going_below_zero_is_rejected_without_writing(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    with pytest.raises(InvalidArgument, match="does not exist"):
        await a.waitgroup_done("never")
    with pytest.raises(NotFound):  # not created by the rejected done
        await backend.store.get(WAITGROUP, "never")
    await a.waitgroup_add("neg", 2)
    with pytest.raises(InvalidArgument, match=r"add\(-3\) would make it -1"):
        await b.waitgroup_add("neg", -3)
    await a.waitgroup_add("neg", -2)
    before = await backend.store.get(WAITGROUP, "neg")
    with pytest.raises(InvalidArgument, match="more done") as info:
        await b.waitgroup_done("neg")
    assert "done() would make it -1" in str(info.value)
    after = await backend.store.get(WAITGROUP, "neg")
    assert after.version == before.version
    assert after.status["count"] == 0


async def test_a_done_is_never_rejected_on_a_stale_copy(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    await a.waitgroup_add("stale", 1)
    await a.waitgroup_done("stale")  # a's cached copy: count 0
    await b.waitgroup_add("stale", 1)
    assert await a.waitgroup_done("stale") == 0


class NoYieldStore(MemoryStore):
    """A memory store whose calls never yield: two writes in a row reach the
    watchers as one batch, so a waiter can only learn of a zero in between
    from the drain counter."""

    async def _round_trip(self) -> None:
        return None


async def test_a_waiter_returns_for_a_drain_even_if_work_was_added_again_at_once() -> None:
    store = NoYieldStore()
    a = Client(store)
    await a.waitgroup_add("wave", 1)
    waiter = asyncio.ensure_future(a.waitgroup_wait("wave", timeout=30))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    # Drain and refill without letting the waiter run in between.
    await a.waitgroup_done("wave")
    await a.waitgroup_add("wave", 1)
    info = await asyncio.wait_for(waiter, 5)
    assert (info.count, info.drains) == (1, 1)
    await a._rt.close()


async def test_after_a_refill_new_waiters_wait_for_the_next_drain(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    await a.waitgroup_add("refill", 1)
    early = asyncio.ensure_future(b.waitgroup_wait("refill", timeout=60))
    await asyncio.sleep(0.2)
    await a.waitgroup_done("refill")
    await a.waitgroup_add("refill", 1)
    assert (await asyncio.wait_for(early, 30)).drains == 1  # it saw the zero (Go semantics)
    with pytest.raises(WaitTimeout) as info:
        await b.waitgroup_wait("refill", timeout=0.3)
    assert "waitgroup 'refill' not done within 0.3s: count is 1" in str(info.value)
    assert isinstance(info.value, TimeoutError)
    late = asyncio.ensure_future(b.waitgroup_wait("refill", timeout=60))
    await asyncio.sleep(0.2)
    assert not late.done()
    await a.waitgroup_done("refill")
    assert (await asyncio.wait_for(late, 30)).drains == 2


async def test_a_waiter_may_start_before_the_group_exists(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    waiter = asyncio.ensure_future(b.waitgroup_wait("later", timeout=60))
    with pytest.raises(WaitTimeout, match="does not exist"):
        await a.waitgroup_wait("later", timeout=0.2)
    await a.waitgroup_add("later", 2)
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await a.waitgroup_done("later")
    await a.waitgroup_done("later")
    assert (await asyncio.wait_for(waiter, 30)).count == 0


async def test_cancelled_and_timed_out_waits_leave_nothing(
    clients: Clients, backend: Backend
) -> None:
    a = clients()
    await a.waitgroup_add("idle", 1)
    before = await backend.store.get(WAITGROUP, "idle")
    task = asyncio.ensure_future(a.waitgroup_wait("idle"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(WaitTimeout):
        await a.waitgroup_wait("idle", timeout=0.1)
    assert all(h._watchers == 0 for h in a._rt._hubs.values())
    assert (await backend.store.get(WAITGROUP, "idle")).version == before.version


class LostResponseStore(MemoryStore):
    """The next status write is applied, but its caller sees a conflict, as when a
    write's response is lost and the store's retry of it hits the new version."""

    lose_next = False

    async def replace_status(
        self,
        kind: Kind,
        name: str,
        status: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        written = await super().replace_status(
            kind, name, status, version=version, timeout=timeout, on_sent=on_sent
        )
        if self.lose_next:
            self.lose_next = False
            raise Conflict("simulated: the retried write found the object changed")
        return written


async def test_an_add_whose_response_was_lost_is_applied_once() -> None:
    store = LostResponseStore()
    a = Client(store)
    await a.waitgroup_add("once", 2)
    store.lose_next = True
    assert await a.waitgroup_add("once", 3) == 5
    store.lose_next = True
    assert await a.waitgroup_done("once") == 4
    assert (await store.get(WAITGROUP, "once")).status["count"] == 4
    await a._rt.close()


BAD: list[tuple[Callable[[Client], Awaitable[object]], type]] = [
    (lambda c: c.waitgroup_add("w", "1"), InvalidArgument),  # type: ignore[arg-type]
    (lambda c: c.waitgroup_add("w", True), InvalidArgument),
    (lambda c: c.waitgroup_add("w", 1.0), InvalidArgument),  # type: ignore[arg-type]
    (lambda c: c.waitgroup_add("w", 10**7), InvalidArgument),
    (lambda c: c.waitgroup_add("W", 1), InvalidName),
    (lambda c: c.waitgroup_done("w w"), InvalidName),
    (lambda c: c.waitgroup_wait("w", timeout=-0.5), InvalidArgument),
    (lambda c: c.waitgroup_status("W"), InvalidName),
]


@pytest.mark.parametrize(("call", "error"), BAD)
async def test_bad_arguments_fail_before_any_call(
    call: Callable[[Client], Awaitable[object]], error: type
) -> None:
    store = MemoryStore()
    with pytest.raises(error):
        await call(Client(store))
    assert store._revision == 0


async def test_wait_times_out_exactly_at_its_timeout_on_a_fake_clock() -> None:
    store, clock = MemoryStore(), FakeClock()
    a = Client(store, clock=clock)
    await a.waitgroup_add("timed", 1)
    waiter = asyncio.ensure_future(a.waitgroup_wait("timed", timeout=10))
    await settle()
    await clock.advance(9.9)
    assert not waiter.done()
    await clock.advance(0.1)
    with pytest.raises(WaitTimeout, match="count is 1"):
        await asyncio.wait_for(waiter, 5)
    waiter = asyncio.ensure_future(a.waitgroup_wait("timed", timeout=10))
    await settle()
    await a.waitgroup_done("timed")
    assert (await asyncio.wait_for(waiter, 5)).count == 0
    await a._rt.close()
