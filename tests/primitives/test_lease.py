"""Leases and leader election on every store (memory and the real API server)."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from konductor import (
    AcquireTimeout,
    Client,
    Conflict,
    InvalidArgument,
    InvalidName,
    LeaseLost,
)
from konductor._primitives._lease import Lease
from konductor.store import LEASE, LocalStore, MemoryStore, Store
from tests.primitives.lease_helpers import MICRO_TIME, Leaders, Outage, tokens_increase
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def test_acquire_renew_release_and_the_record_written(
    clients: Clients, backend: Backend
) -> None:
    client = clients()
    lease = await client.acquire_lease("leader", ttl=7)
    assert lease.token == 0
    assert lease.holder == client.identity
    assert lease.ttl == 7
    spec = (await backend.store.get(LEASE, "leader")).spec
    assert spec["holderIdentity"] == client.identity
    assert spec["leaseDurationSeconds"] == 7
    assert spec["leaseTransitions"] == 0
    assert re.match(MICRO_TIME, spec["acquireTime"])
    assert re.match(MICRO_TIME, spec["renewTime"])
    lease.ensure_held()
    await lease.release()
    await lease.release()  # idempotent
    with pytest.raises(LeaseLost, match="released"):
        lease.ensure_held()
    spec = (await backend.store.get(LEASE, "leader")).spec
    # client-go's ReleaseOnCancel shape: holder "", duration 1, transitions kept.
    assert spec["holderIdentity"] == ""
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    async with client.lease("leader", ttl=7) as again:
        assert again.token == 1
    assert (await backend.store.get(LEASE, "leader")).spec["leaseTransitions"] == 1


async def test_ttl_is_rounded_up_to_whole_seconds(clients: Clients, backend: Backend) -> None:
    lease = await clients().acquire_lease("rounded", ttl=2.5)
    assert lease.ttl == 3
    assert (await backend.store.get(LEASE, "rounded")).spec["leaseDurationSeconds"] == 3
    await lease.release()


async def test_bad_arguments_fail_before_any_api_call(clients: Clients, backend: Backend) -> None:
    client = clients()
    for ttl in (0.5, 0, -1, "15", float("nan"), 10**9):
        with pytest.raises(InvalidArgument, match="ttl"):
            await client.acquire_lease("bad", ttl=ttl)
    with pytest.raises(InvalidArgument, match="timeout"):
        await client.acquire_lease("bad", timeout=-1)
    with pytest.raises(InvalidName):
        await client.acquire_lease("Bad_Name")
    with pytest.raises(InvalidArgument, match="ttl"):
        client.lease("bad", ttl=0.2)
    with pytest.raises(InvalidArgument, match="ttl"):
        await client.try_acquire_lease("bad", ttl=0.99)
    with pytest.raises(InvalidArgument, match="leader_fn"):
        await client.campaign("bad", None)  # type: ignore[arg-type]

    async def lead(lease: Lease) -> None:
        await asyncio.sleep(0)

    with pytest.raises(InvalidArgument, match="ttl"):
        await client.campaign("bad", lead, ttl=0)
    assert (await backend.store.list(LEASE)).items == ()


async def _no_args() -> None:
    pass


async def _two_args(lease: Lease, extra: int) -> None:
    pass


def _sync(lease: Lease) -> None:
    pass


class _AsyncCallable:
    async def __call__(self, lease: Lease) -> int:
        return 7


async def test_leader_fn_is_checked_before_anything_is_written(
    clients: Clients, backend: Backend
) -> None:
    client = clients()
    bad: list[tuple[Any, str]] = [
        (lambda: 1, "async function"),
        (_sync, "async function"),
        (lambda lease: asyncio.sleep(0), "async function"),  # sync, returns an awaitable
        (_no_args, "one argument"),
        (_two_args, "one argument"),
        (functools.partial(_two_args, extra=1, lease=None), "one argument"),
        (42, "async function"),
    ]
    for fn, problem in bad:
        with pytest.raises(InvalidArgument, match=f"leader_fn must .*{problem}"):
            await client.campaign("checked", fn)
    assert (await backend.store.list(LEASE)).items == ()  # nothing was written
    # What passes the check: an async function, a partial of one, an async __call__.
    assert await client.campaign("checked", _AsyncCallable(), ttl=3) == 7
    assert await client.campaign("checked", functools.partial(_two_args, extra=1), ttl=3) is None


async def test_mutual_exclusion_and_increasing_tokens_under_contention(clients: Clients) -> None:
    leaders = Leaders()
    cs = [clients() for _ in range(3)]

    async def worker(c: Client, n: int) -> None:
        for _ in range(3):
            async with c.lease("contended", ttl=5, timeout=120) as lease:
                leaders.enter(f"{c.identity}/{n}", lease.token)
                await asyncio.sleep(0.02)
                leaders.leave(f"{c.identity}/{n}", cancelled=False)

    # Three clients, two tasks each: contention between clients and within one.
    await asyncio.gather(*(worker(cs[i % 3], i) for i in range(6)))
    assert len(leaders.history) == 18
    assert leaders.max == 1
    tokens = [t for _, t in leaders.history]
    assert tokens_increase(tokens)  # a strictly greater token for every holder
    assert tokens == list(range(18))  # and nobody's grant went unrecorded


async def test_release_hands_over_promptly(clients: Clients) -> None:
    holder, waiter = clients(), clients()
    lease = await holder.acquire_lease("handover", ttl=30)
    task = asyncio.ensure_future(waiter.acquire_lease("handover", ttl=30))
    await asyncio.sleep(0.5)
    assert not task.done()
    start = time.monotonic()
    await lease.release()
    taken = await asyncio.wait_for(task, 30)
    elapsed = time.monotonic() - start
    assert taken.token == lease.token + 1
    assert taken.holder == waiter.identity
    # Watch-driven: far sooner than the 30 s the lease would take to expire.
    assert elapsed < 10, elapsed
    await taken.release()


async def test_timeout_raises_and_leaves_the_lease_unchanged(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    held = await a.acquire_lease("busy", ttl=30)
    before = await backend.store.get(LEASE, "busy")
    with pytest.raises(AcquireTimeout, match="busy") as info:
        await b.acquire_lease("busy", timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert a.identity in str(info.value)
    assert await b.try_acquire_lease("busy") is None
    after = await backend.store.get(LEASE, "busy")
    assert after.version == before.version  # not a single write
    assert after.spec == before.spec
    # A cancelled wait leaves nothing behind either.
    task = asyncio.ensure_future(b.acquire_lease("busy"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await backend.store.get(LEASE, "busy")).version == before.version
    await held.release()


async def test_a_lease_taken_away_is_lost_and_the_body_cancelled(
    clients: Clients, backend: Backend
) -> None:
    client = clients()
    cancelled = asyncio.Event()

    async def guarded() -> None:
        async with client.lease("stolen", ttl=3):
            obj = await backend.store.get(LEASE, "stolen")
            # Another elector (say, a Go service whose operator forced it) takes it.
            spec = {
                **obj.spec,
                "holderIdentity": "intruder",
                "leaseTransitions": obj.spec["leaseTransitions"] + 1,
            }
            await backend.store.replace_spec(LEASE, "stolen", spec, version=obj.version)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    with pytest.raises(LeaseLost, match=r"removed|judged expired"):
        await asyncio.wait_for(guarded(), 30)  # lost at its next renewal, about 1 s later
    assert cancelled.is_set()
    # Releasing on exit did not clear the intruder's record.
    assert (await backend.store.get(LEASE, "stolen")).spec["holderIdentity"] == "intruder"


def _leader_fn(leaders: Leaders, who: str) -> Callable[[Lease], Awaitable[None]]:
    async def lead(lease: Lease) -> None:
        leaders.enter(who, lease.token)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            leaders.leave(who, cancelled=True)
            raise

    return lead


async def test_campaign_one_leader_among_three_and_takeover_on_loss(backend: Backend) -> None:
    # Each campaigner has its own connection that the test can cut.
    conns = [Outage(backend.another()) for _ in range(3)]
    cs = [Client(conn, identity=f"candidate-{i}") for i, conn in enumerate(conns)]
    leaders = Leaders()
    tasks: list[asyncio.Future[None]] = [
        asyncio.ensure_future(c.campaign("elect", _leader_fn(leaders, c.identity), ttl=3))
        for c in cs
    ]
    try:
        await leaders.wait_for(lambda: len(leaders.current) == 1)
        await asyncio.sleep(2)  # renewals go on; nobody else becomes leader
        assert leaders.max == 1
        assert len(leaders.history) == 1
        first = leaders.current[0]
        spec = (await backend.store.get(LEASE, "elect")).spec
        assert spec["holderIdentity"] == first

        conns[int(first.rsplit("-", 1)[1])].down = True  # the leader loses its network
        await leaders.wait_for(lambda: first in leaders.cancelled, timeout=30)
        await leaders.wait_for(lambda: len(leaders.current) == 1, timeout=30)
        second = leaders.current[0]
        assert second != first
        assert leaders.max == 1  # the old leader was cancelled before the new one started
        assert tokens_increase(t for _, t in leaders.history)
        assert (await backend.store.get(LEASE, "elect")).spec["holderIdentity"] == second
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            conn.down = False
        for c in cs:
            await c.close()
    assert leaders.current == []


async def test_campaign_returns_what_leader_fn_returns_and_releases(
    clients: Clients, backend: Backend
) -> None:
    client = clients()

    async def lead(lease: Lease) -> int:
        assert (await backend.store.get(LEASE, "once")).spec["holderIdentity"] == lease.holder
        return lease.token + 100

    assert await client.campaign("once", lead, ttl=5) == 100
    assert (await backend.store.get(LEASE, "once")).spec["holderIdentity"] == ""

    async def fail(lease: Lease) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await client.campaign("once", fail, ttl=5)
    assert (await backend.store.get(LEASE, "once")).spec["holderIdentity"] == ""


# --- spec.preferredHolder (Kubernetes 1.31+; v1.20 drops the field, so these run on the
# --- in-process stores, which keep unknown Lease fields as newer API servers do)


@pytest.fixture(params=["memory", "local"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[Store, Store]:
    if request.param == "memory":
        memory = MemoryStore()
        return memory, memory
    db = tmp_path / "konductor.db"
    return LocalStore(db), LocalStore(db)


async def _prefer(store: Store, name: str, who: str | None) -> None:
    """Set spec.preferredHolder as a person or a controller would (kubectl edit)."""
    while True:
        obj = await store.get(LEASE, name)
        spec = dict(obj.spec)
        if who is None:
            spec.pop("preferredHolder", None)
        else:
            spec["preferredHolder"] = who
        try:
            await store.replace_spec(LEASE, name, spec, version=obj.version)
            return
        except Conflict:
            continue


async def test_the_leader_yields_to_the_preferred_holder(two_stores: tuple[Store, Store]) -> None:
    store_a, store_b = two_stores
    a, b = Client(store_a, identity="a"), Client(store_b, identity="b")
    leaders = Leaders()
    tasks = [
        asyncio.ensure_future(c.campaign("pref", _leader_fn(leaders, c.identity), ttl=3))
        for c in (a, b)
    ]
    try:
        await leaders.wait_for(lambda: len(leaders.current) == 1)
        first = leaders.current[0]
        other = "b" if first == "a" else "a"
        first_token = leaders.history[0][1]
        named = time.monotonic()
        await _prefer(store_a, "pref", other)
        # The leader's body is cancelled at its next renewal (about ttl/3), then it
        # releases: the named one takes over at once, with the next token.
        await leaders.wait_for(lambda: leaders.current == [other], timeout=10)
        assert time.monotonic() - named < 3 * 0.9
        assert first in leaders.cancelled
        assert leaders.max == 1
        assert leaders.history[-1] == (other, first_token + 1)
        spec = (await store_a.get(LEASE, "pref")).spec
        assert spec["holderIdentity"] == other
        assert spec["preferredHolder"] == other  # kept by every writer
        # The one that yielded campaigns again but does not take it from the preferred one.
        await asyncio.sleep(4)
        assert leaders.current == [other]
        assert len(leaders.history) == 2
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.close()
        await b.close()


async def test_a_guarded_lease_yielding_raises_lease_lost_and_releases_after_the_body(
    two_stores: tuple[Store, Store],
) -> None:
    store, observer = two_stores
    client = Client(store, identity="me")
    body_ended = 0.0
    try:
        with pytest.raises(LeaseLost, match=r"preferredHolder .*'go-elector'") as caught:
            async with client.lease("guarded", ttl=3) as lease:
                await _prefer(observer, "guarded", "go-elector")
                try:
                    await asyncio.sleep(30)
                finally:
                    body_ended = time.monotonic()
                    # Not released while the body still runs: nobody else could take it yet.
                    spec = (await observer.get(LEASE, "guarded")).spec
                    assert spec["holderIdentity"] == "me"
        assert isinstance(caught.value.__cause__, asyncio.CancelledError)
        assert lease.is_lost
        assert time.monotonic() - body_ended < 1
        # Released at the exit (a lost grant's release runs in the background, so
        # that a store that does not answer cannot delay the LeaseLost).
        deadline = time.monotonic() + 2
        while (spec := (await observer.get(LEASE, "guarded")).spec)["holderIdentity"] != "":
            assert time.monotonic() < deadline, spec
            await asyncio.sleep(0.02)
        assert spec["preferredHolder"] == "go-elector"
        # Nobody but the named one takes it now; clearing the field lets anyone lead.
        assert await client.try_acquire_lease("guarded", ttl=3) is None
        with pytest.raises(AcquireTimeout, match="preferredHolder names 'go-elector'"):
            await client.acquire_lease("guarded", ttl=3, timeout=0.3)
        await _prefer(observer, "guarded", None)
        again = await client.acquire_lease("guarded", ttl=3, timeout=5)
        assert again.token == lease.token + 1
        await again.release()
    finally:
        await client.close()
