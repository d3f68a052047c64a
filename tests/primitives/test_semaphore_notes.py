"""Semaphore entries that carry an adapter's note (the seam's acquire_semaphore_noted).

On every store, the real API server included (whose CRD schema must keep the
unknown fields): the note is on the queue ticket, stays through the
promotion to a grant and through renewals, and never changes what is granted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from konductor import Client, SyncClient
from konductor._integration import (
    SemaphoreRequest,
    Slot,
    acquire_semaphore_noted,
    semaphore_entries,
    sync_acquire_semaphore_noted,
)
from konductor.store import MemoryStore

Clients = Callable[..., Client]
NOTE = {"member": "abc", "demand": 7}


async def test_a_note_is_kept_from_ticket_to_grant_and_through_renewals(clients: Clients) -> None:
    holder, waiter = clients(), clients()
    one = SemaphoreRequest.parse("noted", 2, 2, ttl=3, timeout=20)
    first = await acquire_semaphore_noted(
        holder, one, {"member": "first", "demand": 2}, blocking=True
    )
    assert first is not None
    assert await acquire_semaphore_noted(waiter, one, NOTE, blocking=False) is None
    task = asyncio.create_task(acquire_semaphore_noted(waiter, one, NOTE, blocking=True))

    async def queue() -> tuple[tuple[Slot, ...], tuple[Slot, ...]]:
        while True:
            status = await waiter.admin.describe("semaphore", "noted")
            holders, tickets = semaphore_entries(status.status)
            if tickets:
                return holders, tickets
            await asyncio.sleep(0.05)

    holders, tickets = await asyncio.wait_for(queue(), 10)
    assert [dict(t.extra) for t in tickets] == [NOTE]
    assert [dict(h.extra) for h in holders] == [{"member": "first", "demand": 2}]
    await first.release()
    second = await asyncio.wait_for(task, 10)
    assert second is not None
    assert second.count == 2
    deadline = asyncio.get_running_loop().time() + 15
    while True:  # until renewed at least once (every ttl/3)
        status = await waiter.admin.describe("semaphore", "noted")
        holders, tickets = semaphore_entries(status.status)
        assert tickets == ()
        assert [(h.id, dict(h.extra)) for h in holders] == [(second.id, NOTE)]
        if holders[0].renewals >= 1:
            break
        assert asyncio.get_running_loop().time() < deadline, "never renewed"
        await asyncio.sleep(0.2)
    await second.release()


def test_the_sync_twin_records_the_note() -> None:
    with SyncClient(MemoryStore()) as client:
        request = SemaphoreRequest.parse("noted", 3, 1, ttl=10)
        grant = sync_acquire_semaphore_noted(client, request, NOTE, blocking=False)
        assert grant is not None
        holders, _ = semaphore_entries(client.admin.describe("semaphore", "noted").status)
        assert [dict(h.extra) for h in holders] == [NOTE]
        grant.release()
