"""The semaphore on every store, with real contention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from konductor import AcquireTimeout, Client, InvalidArgument, InvalidName, NotFound
from konductor.store import MUTEX, SEMAPHORE
from konductor.testing import simulate_crash
from tests.store.conftest import Backend

Clients = Callable[..., Client]


class Witness:
    """Counts who is inside, outside konductor's own bookkeeping."""

    def __init__(self) -> None:
        self.inside = 0
        self.max = 0
        self.entries = 0

    async def visit(self, hold: float) -> None:
        self.inside += 1
        self.entries += 1
        self.max = max(self.max, self.inside)
        await asyncio.sleep(hold)
        self.inside -= 1


async def test_acquire_release_and_context_manager(clients: Clients, backend: Backend) -> None:
    client = clients()
    permit = await client.acquire_semaphore("sem", permits=2)
    assert permit.count == 1
    assert permit.token >= 1
    obj = await backend.store.get(SEMAPHORE, "sem")
    assert obj.spec == {"permits": 2}
    assert obj.status["inUse"] == 1
    assert obj.status["holders"][0]["holder"] == client.identity
    await permit.release()
    await permit.release()  # idempotent
    async with client.semaphore("sem") as p2:
        assert p2.token > permit.token
        p2.ensure_held()
    obj = await backend.store.get(SEMAPHORE, "sem")
    assert obj.status["inUse"] == 0
    assert obj.status["holders"] == []


async def test_many_clients_never_exceed_permits(clients: Clients) -> None:
    witness = Witness()
    cs = [clients() for _ in range(3)]

    async def worker(c: Client) -> None:
        for _ in range(3):
            async with c.semaphore("limited", permits=3, timeout=120):
                await witness.visit(0.02)

    await asyncio.gather(*(worker(cs[i % 3]) for i in range(12)))
    assert witness.entries == 36
    assert witness.max <= 3
    assert witness.max == 3  # real contention happened


async def test_waiters_are_served_in_arrival_order(clients: Clients) -> None:
    client = clients()
    holder = await client.acquire_semaphore("fifo", permits=1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with clients().semaphore("fifo", timeout=60):
            order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.ensure_future(waiter(i)))
        await asyncio.sleep(0.3)  # each enqueues before the next arrives
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def _queued(backend: Backend, name: str, count: int) -> None:
    """Until ``count`` tickets are in the stored queue (no sleeping on a guess)."""
    for _ in range(600):
        obj = await backend.store.get(SEMAPHORE, name)
        if len(obj.status.get("queue") or []) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} tickets never reached the queue of {name!r}")


async def test_waiters_are_served_by_priority_then_arrival(
    clients: Clients, backend: Backend
) -> None:
    """Each waiter has its own client (own connection); tickets queue one by one."""
    client = clients()
    holder = await client.acquire_semaphore("prio", permits=1)
    order: list[str] = []

    async def waiter(label: str, priority: int) -> None:
        async with clients().semaphore("prio", timeout=60, priority=priority):
            order.append(label)

    tasks = []
    for i, (label, priority) in enumerate(
        [("low", -5), ("mid-1", 0), ("high", 50), ("mid-2", 0), ("higher", 60)]
    ):
        tasks.append(asyncio.ensure_future(waiter(label, priority)))
        await _queued(backend, "prio", i + 1)
    obj = await backend.store.get(SEMAPHORE, "prio")
    assert [q.get("priority", 0) for q in obj.status["queue"]] == [-5, 0, 50, 0, 60]
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == ["higher", "high", "mid-1", "mid-2", "low"]


async def test_mutex_waiters_are_served_by_priority(clients: Clients, backend: Backend) -> None:
    client = clients()
    lock = await client.acquire_mutex("prio-m")
    order: list[str] = []

    async def waiter(label: str, priority: int) -> None:
        async with clients().mutex("prio-m", timeout=60, priority=priority):
            order.append(label)

    tasks = []
    for i, (label, priority) in enumerate([("first", 0), ("urgent", 10)]):
        tasks.append(asyncio.ensure_future(waiter(label, priority)))
        for _ in range(600):
            obj = await backend.store.get(MUTEX, "prio-m")
            if len(obj.status.get("queue") or []) > i:
                break
            await asyncio.sleep(0.05)
    await lock.release()
    await asyncio.gather(*tasks)
    assert order == ["urgent", "first"]


async def test_timeout_raises_and_leaves_no_ticket(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    held = await a.acquire_semaphore("busy", permits=1)
    with pytest.raises(AcquireTimeout) as info:
        await b.acquire_semaphore("busy", timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert "busy" in str(info.value)
    obj = await backend.store.get(SEMAPHORE, "busy")
    assert obj.status["queue"] == []
    assert obj.status["inUse"] == 1
    await held.release()


async def test_cancelled_acquire_leaves_nothing(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    held = await a.acquire_semaphore("cancel", permits=1)
    task = asyncio.ensure_future(b.acquire_semaphore("cancel"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await backend.store.get(SEMAPHORE, "cancel")).status.get("waiting") == 1:
            break
    assert (await backend.store.get(SEMAPHORE, "cancel")).status["waiting"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    obj = await backend.store.get(SEMAPHORE, "cancel")
    assert obj.status["queue"] == []
    assert obj.status["waiting"] == 0
    await held.release()
    obj = await backend.store.get(SEMAPHORE, "cancel")
    assert obj.status["holders"] == []


async def test_try_acquire_does_not_wait_or_queue(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    p = await a.try_acquire_semaphore("try", permits=1)
    assert p is not None
    assert await b.try_acquire_semaphore("try") is None
    obj = await backend.store.get(SEMAPHORE, "try")
    assert obj.status["queue"] == []
    await p.release()
    p2 = await b.try_acquire_semaphore("try")
    assert p2 is not None
    assert p2.token > p.token


async def test_count_takes_several_permits(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    big = await a.acquire_semaphore("pool", permits=5, count=4)
    assert (await backend.store.get(SEMAPHORE, "pool")).status["inUse"] == 4
    assert await b.try_acquire_semaphore("pool", count=2) is None
    small = await b.try_acquire_semaphore("pool", count=1)
    assert small is not None
    await big.release()
    await small.release()


async def test_cluster_spec_wins_and_a_new_permit_count_applies(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    first = await a.acquire_semaphore("edit", permits=1)
    with pytest.raises(AcquireTimeout):
        await b.acquire_semaphore("edit", permits=5, timeout=0.3)  # the cluster says 1
    obj = await backend.store.get(SEMAPHORE, "edit")
    await backend.store.replace_spec(SEMAPHORE, "edit", {"permits": 2}, version=obj.version)
    second = await b.acquire_semaphore("edit", timeout=30)  # as kubectl edit would
    assert second.token > first.token
    await first.release()
    await second.release()


async def test_missing_semaphore_without_permits_is_a_clear_error(clients: Clients) -> None:
    with pytest.raises(NotFound, match="pass permits=N"):
        await clients().acquire_semaphore("nowhere")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"permits": 0}, "permits must be at least 1"),
        ({"permits": 2, "count": 3}, "count=3 is more than permits=2"),
        ({"permits": 1, "ttl": 0}, "ttl must be positive"),
        ({"permits": 1, "ttl": -5}, "ttl must be positive"),
        ({"permits": 1, "ttl": 10**9}, "longer than"),
        ({"permits": 1, "timeout": -1}, "timeout must be >= 0"),
        ({"permits": "3"}, "permits must be an integer"),
        ({"permits": 1, "priority": 101}, "priority must be from -100 to 100"),
        ({"permits": 1, "priority": 1.5}, "priority must be an integer"),
        ({"permits": 1, "priority": True}, "priority must be an integer"),
    ],
)
async def test_bad_input_is_rejected_before_any_api_call(
    clients: Clients, backend: Backend, kwargs: dict[str, object], message: str
) -> None:
    client = clients()
    before = getattr(backend.store, "api_requests", 0)
    with pytest.raises(InvalidArgument, match=message):
        await client.acquire_semaphore("valid-name", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidName):
        await client.acquire_semaphore("Bad_Name", permits=1)
    assert getattr(backend.store, "api_requests", 0) == before


async def test_renewals_keep_a_permit_alive_for_many_ttls(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    async with a.semaphore("renewed", permits=1, ttl=1.5) as permit:
        await asyncio.sleep(5)  # more than 3 TTLs
        permit.ensure_held()
        assert await b.try_acquire_semaphore("renewed", ttl=1.5) is None
        holder = (await backend.store.get(SEMAPHORE, "renewed")).status["holders"][0]
        assert holder["renewals"] >= 3


async def test_a_dead_holder_is_reclaimed_after_its_ttl(clients: Clients) -> None:
    dead, alive = clients(), clients()
    await dead.acquire_semaphore("crash", permits=1, ttl=2)
    simulate_crash(dead)  # renewals stop, nothing is released
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with alive.semaphore("crash", ttl=2, timeout=30):
        waited = loop.time() - start
    assert waited >= 1.5  # not before the dead holder's TTL (as this observer saw it)


async def test_ttl_and_timeout_take_timedeltas(clients: Clients, backend: Backend) -> None:
    import datetime as dt

    a, b = clients(), clients()
    held = await a.acquire_semaphore("td", permits=1, ttl=dt.timedelta(seconds=20))
    obj = await backend.store.get(SEMAPHORE, "td")
    assert obj.status["holders"][0]["ttlSeconds"] == 20.0
    with pytest.raises(AcquireTimeout, match=r"within 0\.2s"):
        await b.acquire_semaphore("td", timeout=dt.timedelta(milliseconds=200))
    with pytest.raises(InvalidArgument, match="ttl must be positive"):
        await b.acquire_semaphore("td", ttl=dt.timedelta(seconds=-1))
    await held.release()
