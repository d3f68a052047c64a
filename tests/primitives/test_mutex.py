"""Mutex and read-write mutex on every store, with real contention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from konductor import AcquireTimeout, Client, MutexLost
from konductor.store import MUTEX, RWMUTEX
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def test_mutex_is_exclusive_under_contention(clients: Clients) -> None:
    cs = [clients() for _ in range(3)]
    inside = peak = entries = 0
    tokens: list[int] = []

    async def worker(c: Client) -> None:
        nonlocal inside, peak, entries
        for _ in range(3):
            async with c.mutex("m", timeout=120) as lock:
                inside += 1
                entries += 1
                peak = max(peak, inside)
                tokens.append(lock.token)
                await asyncio.sleep(0.01)
                inside -= 1

    await asyncio.gather(*(worker(cs[i % 3]) for i in range(6)))
    assert entries == 18
    assert peak == 1
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 18


async def test_mutex_fifo_timeout_and_try(clients: Clients, backend: Backend) -> None:
    a, b, c = clients(), clients(), clients()
    held = await a.acquire_mutex("f")
    assert held.mode == "exclusive"
    assert await b.try_acquire_mutex("f") is None
    with pytest.raises(AcquireTimeout):
        await b.acquire_mutex("f", timeout=0.3)
    obj = await backend.store.get(MUTEX, "f")
    assert obj.status["holder"] == a.identity
    assert obj.status["queue"] == []
    order: list[str] = []

    async def wait(client: Client, tag: str) -> None:
        async with client.mutex("f", timeout=60):
            order.append(tag)

    async def queued(count: int) -> dict[str, object]:
        """The status once ``count`` tickets are queued and ``waiting`` says so.

        No sleeping on a guess: under load a ticket can take longer than any
        fixed pause to land. ``waiting`` is a derived column: a ticket appended
        while another writer counted may leave it behind until the write that
        settles it (at most a second after the object goes quiet).
        """
        for _ in range(400):
            status = (await backend.store.get(MUTEX, "f")).status
            if len(status.get("queue") or []) >= count and status.get("waiting") == count:
                return status
            await asyncio.sleep(0.05)
        raise AssertionError(f"never {count} tickets and waiting={count}: {status}")

    first = asyncio.ensure_future(wait(b, "b"))
    await queued(1)
    second = asyncio.ensure_future(wait(c, "c"))
    status = await queued(2)
    assert [t["holder"] for t in status["queue"]] == [b.identity, c.identity]  # type: ignore[attr-defined]
    await held.release()
    await asyncio.gather(first, second)
    assert order == ["b", "c"]
    final = await backend.store.get(MUTEX, "f")
    assert final.status["holder"] is None
    assert final.status["holders"] == []


async def test_rwmutex_readers_share_writers_exclude(clients: Clients, backend: Backend) -> None:
    cs = [clients() for _ in range(3)]
    readers = writers = 0
    max_readers = 0
    violations: list[str] = []

    async def reader(c: Client) -> None:
        nonlocal readers, max_readers
        for _ in range(4):
            async with c.read_lock("rw", timeout=120):
                readers += 1
                max_readers = max(max_readers, readers)
                if writers:
                    violations.append("reader beside a writer")
                await asyncio.sleep(0.02)
                readers -= 1

    async def writer(c: Client) -> None:
        nonlocal writers
        for _ in range(3):
            async with c.write_lock("rw", timeout=120):
                writers += 1
                if writers > 1 or readers:
                    violations.append("writer not alone")
                await asyncio.sleep(0.02)
                writers -= 1

    await asyncio.gather(
        *(reader(cs[i % 3]) for i in range(4)), *(writer(cs[i % 3]) for i in range(2))
    )
    assert violations == []
    assert max_readers >= 2  # readers really shared the lock
    obj = await backend.store.get(RWMUTEX, "rw")
    assert obj.status["holders"] == []


async def test_a_waiting_writer_is_not_starved_by_new_readers(clients: Clients) -> None:
    r1, w, r2 = clients(), clients(), clients()
    first_read = await r1.acquire_read_lock("starve")
    writer_task = asyncio.ensure_future(w.acquire_write_lock("starve", timeout=60))
    await asyncio.sleep(0.3)  # the writer is queued
    with pytest.raises(AcquireTimeout):
        await r2.acquire_read_lock("starve", timeout=0.5)  # may not overtake the writer
    await first_read.release()
    write = await writer_task
    assert write.mode == "write"
    await write.release()
    late = await r2.acquire_read_lock("starve", timeout=30)
    assert late.token > write.token


async def test_a_lock_taken_away_is_lost_loudly(clients: Clients, backend: Backend) -> None:
    client = clients()
    body_cancelled = False
    with pytest.raises(MutexLost, match="removed"):
        async with client.mutex("lose", ttl=3) as lock:
            # Another client judged us dead and removed our entry: our next
            # renewal (about ttl/3 later) finds it gone.
            obj = await backend.store.get(MUTEX, "lose")
            status = {**obj.status, "holders": [], "holder": None}
            await backend.store.replace_status(MUTEX, "lose", status, version=obj.version)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert lock.is_lost
    assert body_cancelled
