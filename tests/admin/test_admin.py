"""Client.admin: status, describe, watch, force-release, delete and repair on every store.

Each claim is checked on the memory and local stores and on the real
kube-apiserver (the ``backend`` fixture). Broken state is written the ways it
gets in for real: a duplicate id (which no schema can refuse) on every store,
and shapes the schema refuses only on the stores whose schema check can be
bypassed, as an older writer would have written them.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from konductor import (
    Admin,
    Client,
    Conflict,
    CorruptState,
    InvalidArgument,
    LocalStore,
    NotFound,
    ObjectStatus,
    SemaphoreLost,
    SyncAdmin,
    SyncClient,
)
from konductor.store import BARRIER, ONCE, SEMAPHORE, WAITGROUP
from konductor.testing import FakeClock
from tests.primitives.test_corruption import _schema_bypassed
from tests.store.conftest import Backend

Clients = Callable[..., Client]
T = TypeVar("T")


async def _queued(client: Client, name: str, identities: int) -> list[ObjectStatus]:
    """Describe ``name`` until ``identities`` entries are waiting (a waiter takes a moment)."""
    for _ in range(400):
        current = await client.admin.describe("semaphore", name)
        if len(current.waiters) >= identities:
            return [current]
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {identities} waiters on {name!r}")


async def _next(it: AsyncIterator[T], until: Callable[[T], bool], timeout: float = 20) -> T:
    async def scan() -> T:
        async for item in it:
            if until(item):
                return item
        raise AssertionError("the watch ended")

    return await asyncio.wait_for(scan(), timeout)


async def test_describe_shows_holders_waiters_in_queue_order_tokens_and_ttls(
    clients: Clients,
) -> None:
    a, b, c = clients(identity="a"), clients(identity="b"), clients(identity="c")
    held = await a.acquire_semaphore("pool", 1, ttl=10)
    waits = [
        asyncio.ensure_future(b.acquire_semaphore("pool", ttl=10, timeout=30)),
    ]
    await _queued(a, "pool", 1)
    waits.append(asyncio.ensure_future(c.acquire_semaphore("pool", ttl=10, timeout=30)))
    (current,) = await _queued(a, "pool", 2)
    assert current.summary == "1/1 in use, 2 waiting"
    assert (current.kind, current.primitive, current.capacity) == ("Semaphore", "semaphore", 1)
    assert current.next_token == held.token + 1
    assert current.problem is None
    (holder,) = current.holders
    assert (holder.role, holder.identity, holder.id, holder.token) == (
        "holder",
        "a",
        held.id,
        held.token,
    )
    assert [(w.identity, w.position, w.token) for w in current.waiters] == [
        ("b", 1, None),
        ("c", 2, None),
    ]
    for entry in current.entries:
        assert entry.ttl == 10
        assert entry.expires_in is not None
        assert 0 < entry.expires_in <= 10
        assert entry.renewed_at is not None
        assert entry.renewed_at.endswith("Z")
    await held.release()
    first = await waits[0]
    assert first.token == held.token + 1
    await first.release()
    await (await waits[1]).release()
    with pytest.raises(NotFound):
        await a.admin.describe("semaphore", "nothing-here")
    with pytest.raises(InvalidArgument):
        await a.admin.describe("spaceship", "pool")


async def test_describe_lists_waiters_in_the_order_they_will_be_served(
    clients: Clients,
) -> None:
    """With priorities, positions follow the service order, not the stored array order."""
    a, b, c = clients(identity="a"), clients(identity="b"), clients(identity="c")
    held = await a.acquire_semaphore("ranked", 1, ttl=10)
    waits = [asyncio.ensure_future(b.acquire_semaphore("ranked", ttl=10, timeout=30))]
    await _queued(a, "ranked", 1)
    waits.append(
        asyncio.ensure_future(c.acquire_semaphore("ranked", ttl=10, timeout=30, priority=20))
    )
    (current,) = await _queued(a, "ranked", 2)
    assert [(w.identity, w.position, w.priority) for w in current.waiters] == [
        ("c", 1, 20),
        ("b", 2, 0),
    ]
    await held.release()
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result().holder for t in done] == ["c"]
    for t in done:
        await t.result().release()
    for t in waits:
        await (await t).release()


async def test_status_lists_every_kind_with_its_summary(clients: Clients) -> None:
    a = clients(identity="a")
    await a.waitgroup_add("jobs", 2)
    await a.arrive_barrier("start", 2, party="p1")
    lease = await a.acquire_lease("leader", ttl=5)
    lock = await a.acquire_mutex("m", ttl=5)
    got = await a.admin.status()
    assert got.errors == {}
    assert {(o.kind, o.name): o.summary for o in got.objects} == {
        ("Barrier", "start"): "1/2 arrived",
        ("Mutex", "m"): "locked",
        ("WaitGroup", "jobs"): "count 2",
        ("Lease", "leader"): "held",
    }
    (leader,) = [o for o in got.objects if o.kind == "Lease"]
    assert leader.holders[0].identity == a.identity
    assert leader.holders[0].token == lease.token == leader.next_token
    assert [t.what for t in leader.transitions][:1] == ["acquired"]
    only = await a.admin.status(["mutex"])
    assert [o.name for o in only.objects] == ["m"]
    await lock.release()
    await lease.release()


async def test_force_release_hands_the_permit_to_the_next_waiter_and_the_holder_loses_it(
    clients: Clients,
) -> None:
    a, b, ops = clients(identity="a"), clients(identity="b"), clients(identity="ops")
    stuck = await a.acquire_semaphore("gpu", 1, ttl=3)
    waiting = asyncio.ensure_future(b.acquire_semaphore("gpu", ttl=3, timeout=30))
    await _queued(ops, "gpu", 1)
    assert await ops.admin.force_release("semaphore", "gpu", holder="nobody") == ()
    removed = await ops.admin.force_release("semaphore", "gpu", holder="a")
    assert [(e.identity, e.token) for e in removed] == [("a", stuck.token)]
    granted = await asyncio.wait_for(waiting, 20)  # granted in the same write
    assert granted.token > stuck.token
    await asyncio.wait_for(stuck.lost.wait(), 10)  # at its next renewal (ttl/3)
    with pytest.raises(SemaphoreLost):
        stuck.ensure_held()
    await stuck.release()  # idempotent on a lost grant
    with pytest.raises(InvalidArgument):
        await ops.admin.force_release("semaphore", "gpu")  # nobody chosen
    with pytest.raises(InvalidArgument):
        await ops.admin.force_release("barrier", "gpu", everyone=True)
    assert [
        e.identity for e in await ops.admin.force_release("semaphore", "gpu", everyone=True)
    ] == ["b"]
    await granted.release()


async def test_force_release_of_a_lease_clears_its_holder(clients: Clients) -> None:
    a, ops = clients(identity="a"), clients(identity="ops")
    lease = await a.acquire_lease("sched", ttl=3)
    with pytest.raises(NotFound):
        await ops.admin.force_release("lease", "sched", holder="somebody-else")
    (removed,) = await ops.admin.force_release("lease", "sched", everyone=True)
    assert removed.identity == a.identity
    assert (await ops.admin.describe("lease", "sched")).summary == "free"
    await asyncio.wait_for(lease.lost.wait(), 10)
    assert await ops.admin.force_release("lease", "sched", everyone=True) == ()


async def test_delete_refuses_a_busy_object_unless_forced(clients: Clients) -> None:
    a, ops = clients(identity="a"), clients(identity="ops")
    permit = await a.acquire_semaphore("busy", 2, ttl=3)
    with pytest.raises(Conflict, match="force=True"):
        await ops.admin.delete("semaphore", "busy", force=False)
    before = await ops.admin.delete("semaphore", "busy")
    assert [e.identity for e in before.holders] == ["a"]
    with pytest.raises(NotFound):
        await ops.admin.describe("semaphore", "busy")
    with pytest.raises(NotFound):
        await ops.admin.delete("semaphore", "busy")
    await asyncio.wait_for(permit.lost.wait(), 10)
    await permit.release()


async def test_repair_of_a_duplicate_id_through_the_cas_loop(
    clients: Clients, backend: Backend
) -> None:
    """No schema can say ids are unique: corrupt on every store, the real API server included."""
    a, ops = clients(identity="a"), clients(identity="ops")
    kept = await a.acquire_semaphore("sem", 2, ttl=10)
    other = await a.acquire_semaphore("sem", 2, ttl=10)
    good = await backend.store.get(SEMAPHORE, "sem")
    bad = copy.deepcopy(good.status)
    bad["holders"][1]["id"] = bad["holders"][0]["id"]
    await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    broken = await ops.admin.describe("semaphore", "sem")  # described, not refused
    assert broken.problem is not None
    assert "status.holders[1].id" in broken.problem
    assert broken.summary.startswith("corrupt: ")
    assert len(broken.holders) == 2  # both entries parse on their own
    with pytest.raises(CorruptState):
        await ops.try_acquire_semaphore("sem")
    report = await ops.admin.repair("semaphore", "sem")
    assert report.changed
    assert report.fixed == (f"removed status.holders[1]: it repeats id {kept.id!r}",)
    assert report.before.problem is not None
    assert report.after.problem is None
    assert [e.id for e in report.after.holders] == [kept.id]
    stored = await backend.store.get(SEMAPHORE, "sem")
    assert [h["id"] for h in stored.status["holders"]] == [kept.id]
    assert stored.status["inUse"] == 1
    again = await ops.admin.repair("semaphore", "sem")
    assert not again.changed  # parses now: nothing written
    assert (await backend.store.get(SEMAPHORE, "sem")).version == stored.version
    newer = await asyncio.wait_for(ops.acquire_semaphore("sem", timeout=10), 20)
    assert newer.token > other.token  # tokens never go backwards
    await newer.release()
    await kept.release()
    await other.release()


# -- shapes only a bypassed schema lets in (memory and local stores) --------------------


@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
async def test_repair_removes_entries_that_do_not_parse_and_keeps_the_rest(
    clients: Clients, backend: Backend
) -> None:
    a, ops = clients(identity="a"), clients(identity="ops")
    kept = await a.acquire_semaphore("sem", 3, ttl=10)
    good = await backend.store.get(SEMAPHORE, "sem")
    bad = copy.deepcopy(good.status)
    bad["holders"].append("not an entry")
    bad["queue"] = [{"id": "t", "holder": "h"}]  # a ticket with most fields missing
    with _schema_bypassed():
        await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    broken = await ops.admin.describe("semaphore", "sem")
    assert broken.corrupt
    assert [e.id for e in broken.holders] == [kept.id]
    assert broken.waiters == ()
    report = await ops.admin.repair("semaphore", "sem")
    assert report.fixed == (
        "removed status.holders[1]: it does not parse",
        "removed status.queue[0]: it does not parse",
    )
    assert report.dropped == ({"value": "not an entry"}, {"id": "t", "holder": "h"})
    assert not report.after.corrupt
    kept.ensure_held()
    await kept.release()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_an_unreadable_next_token_needs_the_operator_to_say_how_high(
    clients: Clients, backend: Backend
) -> None:
    a, ops = clients(identity="a"), clients(identity="ops")
    permit = await a.acquire_semaphore("sem", 2, ttl=10)
    good = await backend.store.get(SEMAPHORE, "sem")
    with _schema_bypassed():
        await backend.store.replace_status(
            SEMAPHORE, "sem", {**good.status, "nextToken": "12"}, version=good.version
        )
    with pytest.raises(InvalidArgument, match="next_token=N"):
        await ops.admin.repair("semaphore", "sem")
    report = await ops.admin.repair("semaphore", "sem", next_token=40)
    assert report.fixed == ("status.nextToken set to 40",)
    assert report.after.next_token == 40
    assert (await ops.acquire_semaphore("sem", timeout=5)).token == 40
    await permit.release()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_repair_of_other_kinds(clients: Clients, backend: Backend) -> None:
    ops = clients(identity="ops")
    store = backend.store
    await ops.arrive_barrier("bar", 3, party="p1")
    obj = await store.get(BARRIER, "bar")
    status = {**obj.status, "arrived": [*obj.status["arrived"], {"identity": 5}], "open": "yes"}
    with _schema_bypassed():
        await store.replace_status(BARRIER, "bar", status, version=obj.version)
    assert (await ops.admin.describe("barrier", "bar")).corrupt
    report = await ops.admin.repair("barrier", "bar")
    assert report.fixed == (
        "removed status.arrived[1]: it does not parse",
        "status.open ('yes') set to false",
    )
    assert report.after.summary == "1/3 arrived"

    # A once whose runner's claim does not parse: the claim goes, the run is revoked.
    await store.create(ONCE, "migrate", {})
    obj = await store.get(ONCE, "migrate")
    claim = {"id": "c", "holder": "h", "attempt": 1, "ttlSeconds": "x", "renewals": 0}
    with _schema_bypassed():
        await store.replace_status(
            ONCE, "migrate", {"state": "Running", "attempt": 1, "run": claim}, version=obj.version
        )
    assert (await ops.admin.describe("once", "migrate")).corrupt
    report = await ops.admin.repair("once", "migrate")
    assert report.after.summary == "Pending, attempt 1"
    assert report.dropped == (claim,)

    # A count cannot be guessed: refused, with how to fix it by hand.
    await ops.waitgroup_add("wg", 1)
    obj = await store.get(WAITGROUP, "wg")
    with _schema_bypassed():
        await store.replace_status(WAITGROUP, "wg", {"count": -4}, version=obj.version)
    assert (await ops.admin.describe("waitgroup", "wg")).summary.startswith("corrupt")
    with pytest.raises(CorruptState, match="konductor delete waitgroup wg"):
        await ops.admin.repair("waitgroup", "wg")


# -- watching ---------------------------------------------------------------------------


async def test_watch_yields_the_object_after_each_change(clients: Clients) -> None:
    a, ops = clients(identity="a"), clients(identity="ops")
    it = ops.admin.watch("mutex", "door")
    try:
        assert await asyncio.wait_for(it.__anext__(), 20) is None  # not there yet
        lock = await a.acquire_mutex("door", ttl=5)
        seen = await _next(it, lambda o: o is not None and bool(o.holders))
        assert seen is not None
        assert seen.holders[0].identity == "a"
        await lock.release()
        free = await _next(it, lambda o: o is not None and not o.holders)
        assert free is not None
        assert free.summary == "free"
    finally:
        await it.aclose()


async def test_watch_status_shows_every_change_in_the_namespace(clients: Clients) -> None:
    a, b, ops = clients(identity="a"), clients(identity="b"), clients(identity="ops")
    it = ops.admin.watch_status()
    try:
        first = await asyncio.wait_for(it.__anext__(), 30)
        assert first.objects == ()
        assert first.errors == {}
        permit = await a.acquire_semaphore("pool", 1, ttl=6)
        waiting = asyncio.ensure_future(b.acquire_semaphore("pool", ttl=6, timeout=30))

        def queued(st: Any) -> bool:
            return any(o.name == "pool" and o.waiters for o in st.objects)

        snap = await _next(it, queued)
        (pool,) = snap.objects
        assert [(w.identity, w.position) for w in pool.waiters] == [("b", 1)]
        assert pool.holders[0].identity == "a"
        await permit.release()
        moved = await _next(
            it, lambda st: any(o.holders and o.holders[0].identity == "b" for o in st.objects)
        )
        assert moved.objects[0].waiters == ()
        await (await waiting).release()
        await a.admin.delete("semaphore", "pool")
        await _next(it, lambda st: st.objects == ())
    finally:
        await it.aclose()


async def test_expires_in_counts_down_on_the_observers_own_clock() -> None:
    """TTL left is judged like expiry: from when this observer first saw the entry unchanged."""
    from konductor import MemoryStore

    store = MemoryStore()
    clock = FakeClock()
    async with Client(store, identity="a") as a, Client(store, clock=clock) as ops:
        permit = await a.acquire_semaphore("s", 1, ttl=15)
        first = await ops.admin.describe("semaphore", "s")
        assert first.holders[0].expires_in == 15
        await clock.advance(4)
        later = await ops.admin.describe("semaphore", "s")
        assert later.holders[0].expires_in == 11  # same renewal, seen 4 s ago
        await permit.release()


# -- the blocking twin --------------------------------------------------------------------


def test_sync_admin_has_every_method_of_admin_but_the_watches() -> None:
    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(m)
            for n, m in inspect.getmembers(cls, callable)
            if not n.startswith("_")
        }

    ours, theirs = methods(SyncAdmin), methods(Admin)
    assert set(theirs) - set(ours) == {"watch", "watch_status"}
    for name, twin in ours.items():
        assert list(twin.parameters) == list(theirs[name].parameters), name


def test_sync_client_admin_describes_and_repairs(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with SyncClient(lambda: LocalStore(db), identity="s") as client:
        with client.semaphore("jobs", permits=2):
            got = client.admin.describe("semaphore", "jobs")
            assert [e.identity for e in got.holders] == ["s"]
            assert client.admin.repair("semaphore", "jobs").changed is False
            assert [o.name for o in client.admin.status().objects] == ["jobs"]
        action, created = client.admin.create_semaphore("other", 3)
        assert (action, created.capacity) == ("created", 3)
        assert client.admin.create_semaphore("other", 4, update=True)[0] == "updated"
