"""The barrier on every store, with real contention."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from konductor import Client, InvalidArgument, InvalidName, NotFound, WaitTimeout
from konductor._engine._clock import settle
from konductor._primitives._barrier import barrier_hub
from konductor.store import BARRIER, MemoryStore
from konductor.testing import FakeClock
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def arrived_count(backend: Backend, name: str) -> int:
    try:
        obj = await backend.store.get(BARRIER, name)
    except NotFound:
        return 0
    return int(obj.status.get("arrivedCount", 0))


async def until_arrived(backend: Backend, name: str, count: int) -> None:
    for _ in range(400):
        if await arrived_count(backend, name) >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name}: {count} arrivals never showed up")


async def test_arrive_creates_records_identity_and_counts_once(
    clients: Clients, backend: Backend
) -> None:
    client = clients()
    info = await client.arrive_barrier("start", expected=3)
    assert (info.arrived_count, info.expected, info.open) == (1, 3, False)
    assert info.arrived == (client.identity,)
    assert info.missing == 2
    again = await client.arrive_barrier("start", expected=3)
    assert again.arrived_count == 1
    obj = await backend.store.get(BARRIER, "start")
    assert obj.spec == {"expected": 3}
    assert obj.status["arrivedCount"] == 1
    assert obj.status["open"] is False
    [arrival] = obj.status["arrived"]
    assert arrival["identity"] == client.identity
    assert arrival["arrivedAt"].endswith("Z")
    status = await client.barrier_status("start")
    assert status == info


async def test_concurrent_arrivals_are_counted_exactly_once_and_pass_together(
    clients: Clients, backend: Backend
) -> None:
    n = 5
    cs = [clients() for _ in range(n)]
    started = 0  # parties that have begun arriving (a witness outside konductor)
    started_when_passed: list[int] = []

    async def party(c: Client) -> None:
        nonlocal started
        await asyncio.sleep(random.uniform(0, 0.4))
        started += 1
        # The same party arrives twice at once (a retry racing the original).
        infos = await asyncio.gather(
            c.arrive_barrier("together", expected=n),
            c.arrive_and_wait("together", expected=n, timeout=60),
        )
        started_when_passed.append(started)
        assert infos[1].open

    await asyncio.gather(*(party(c) for c in cs))
    # Nobody passed before the last party had started arriving.
    assert started_when_passed == [n] * n
    obj = await backend.store.get(BARRIER, "together")
    identities = [a["identity"] for a in obj.status["arrived"]]
    assert sorted(identities) == sorted(c.identity for c in cs)
    assert obj.status["arrivedCount"] == n
    assert obj.status["open"] is True


async def test_nobody_passes_before_the_last_arrival(clients: Clients, backend: Backend) -> None:
    n = 4
    cs = [clients() for _ in range(n)]
    waiters = [
        asyncio.ensure_future(c.arrive_and_wait("gate-keeper", expected=n, timeout=60))
        for c in cs[:-1]
    ]
    observer = asyncio.ensure_future(cs[0].wait_barrier("gate-keeper", timeout=60))
    await until_arrived(backend, "gate-keeper", n - 1)
    for _ in range(10):  # n-1 arrived: everybody keeps waiting, checked for a while
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in [*waiters, observer])
    status = await cs[1].barrier_status("gate-keeper")
    assert (status.arrived_count, status.open, status.missing) == (n - 1, False, 1)
    last = await cs[-1].arrive_and_wait("gate-keeper", timeout=60)
    assert last.open
    assert last.arrived_count == n
    infos = await asyncio.wait_for(asyncio.gather(*waiters, observer), 30)
    assert all(i.open and i.arrived_count == n for i in infos)
    assert {i.opened_at for i in infos} == {last.opened_at}


async def test_explicit_parties_count_once_each(clients: Clients, backend: Backend) -> None:
    a, b = clients(), clients()
    # A restarted process (another client) arriving as the same party counts once.
    await a.arrive_barrier("indexed", expected=2, party="worker-0")
    await b.arrive_barrier("indexed", party="worker-0")
    assert (await a.barrier_status("indexed")).arrived == ("worker-0",)
    info = await b.arrive_and_wait("indexed", party="worker-1", timeout=30)
    assert info.open
    assert info.arrived == ("worker-0", "worker-1")


async def test_an_open_barrier_stays_open(clients: Clients, backend: Backend) -> None:
    a, b, late = clients(), clients(), clients()
    await a.arrive_barrier("once-open", expected=2)
    opened = await b.arrive_and_wait("once-open", timeout=30)
    assert opened.open
    before = await backend.store.get(BARRIER, "once-open")
    # Late arrivals and later waits change nothing and return at once.
    info = await late.arrive_and_wait("once-open", timeout=5)
    assert info.open
    assert info.arrived_count == 2
    assert (await a.wait_barrier("once-open", timeout=5)).open
    # Raising spec.expected does not close it either.
    await backend.store.replace_spec(BARRIER, "once-open", {"expected": 5}, version=before.version)
    assert (await late.wait_barrier("once-open", timeout=5)).open
    after = await backend.store.get(BARRIER, "once-open")
    assert after.status == before.status
    assert after.status["openedAt"] == opened.opened_at


async def test_timeout_names_counts_and_leaves_nothing_wrong(
    clients: Clients, backend: Backend
) -> None:
    a, b, c = clients(), clients(), clients()
    await a.arrive_barrier("slow", expected=3)
    with pytest.raises(WaitTimeout) as info:
        await b.arrive_and_wait("slow", timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert "barrier 'slow'" in str(info.value)
    assert "2 of 3 parties arrived" in str(info.value)
    assert "within 0.3s" in str(info.value)
    with pytest.raises(WaitTimeout, match="2 of 3"):
        await c.wait_barrier("slow", timeout=0.2)
    obj = await backend.store.get(BARRIER, "slow")
    assert obj.status["arrivedCount"] == 2
    assert obj.status["open"] is False
    # The waits let go of their watches (nobody retains them; they close after lingering).
    assert barrier_hub(b._rt, "slow")._watchers == 0
    assert barrier_hub(c._rt, "slow")._watchers == 0
    # Retrying counts once; the last party then opens it for everybody.
    retry = asyncio.ensure_future(b.arrive_and_wait("slow", timeout=30))
    await asyncio.sleep(0.2)
    assert not retry.done()
    assert (await c.arrive_and_wait("slow", timeout=30)).open
    assert (await retry).arrived_count == 3


async def test_cancelled_wait_leaves_nothing(clients: Clients, backend: Backend) -> None:
    a = clients()
    await a.arrive_barrier("cancel", expected=2)
    before = await backend.store.get(BARRIER, "cancel")
    task = asyncio.ensure_future(a.wait_barrier("cancel"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert barrier_hub(a._rt, "cancel")._watchers == 0
    assert (await backend.store.get(BARRIER, "cancel")).version == before.version


async def test_waiting_for_a_barrier_that_does_not_exist_yet(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    waiter = asyncio.ensure_future(a.wait_barrier("later", timeout=60))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    with pytest.raises(WaitTimeout, match="does not exist"):
        await b.wait_barrier("later", timeout=0.1)
    await b.arrive_barrier("later", expected=1)
    assert (await asyncio.wait_for(waiter, 30)).open


async def test_lowered_expected_opens_for_waiters(clients: Clients, backend: Backend) -> None:
    a, b, c = clients(), clients(), clients()
    await a.arrive_barrier("shrink", expected=3)
    await b.arrive_barrier("shrink")
    waiter = asyncio.ensure_future(c.wait_barrier("shrink", timeout=60))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    obj = await backend.store.get(BARRIER, "shrink")
    # kubectl edit barrier shrink: expected 3 -> 2; the waiter opens it.
    await backend.store.replace_spec(BARRIER, "shrink", {"expected": 2}, version=obj.version)
    info = await asyncio.wait_for(waiter, 30)
    assert info.open
    assert info.expected == 2
    assert (await backend.store.get(BARRIER, "shrink")).status["open"] is True


async def test_cluster_spec_wins_and_a_mismatch_is_logged(
    clients: Clients, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = clients(), clients()
    await a.arrive_barrier("fixed", expected=2)
    with caplog.at_level(logging.WARNING, logger="konductor"):
        info = await b.arrive_barrier("fixed", expected=5)
    assert info.expected == 2
    assert info.open
    assert "expects 2 parties in the cluster, not 5" in caplog.text


async def test_missing_barrier_without_expected(clients: Clients, backend: Backend) -> None:
    client = clients()
    with pytest.raises(NotFound, match="pass expected=N"):
        await client.arrive_barrier("nobody")
    with pytest.raises(NotFound, match="pass expected=N"):
        await client.arrive_and_wait("nobody", timeout=1)
    with pytest.raises(NotFound):
        await client.barrier_status("nobody")
    assert (await backend.store.list(BARRIER)).items == ()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.arrive_barrier("b", expected=0), InvalidArgument),
        (lambda c: c.arrive_barrier("b", expected=True), InvalidArgument),
        (lambda c: c.arrive_barrier("b", expected=2.0), InvalidArgument),
        (lambda c: c.arrive_barrier("B_bad", expected=2), InvalidName),
        (lambda c: c.arrive_barrier("b", expected=2, party=""), InvalidArgument),
        (lambda c: c.arrive_barrier("b", expected=2, party=3), InvalidArgument),
        (lambda c: c.wait_barrier("b", timeout=-1), InvalidArgument),
        (lambda c: c.arrive_and_wait("b", expected=2, timeout="5"), InvalidArgument),
        (lambda c: c.barrier_status("B_bad"), InvalidName),
    ],
)
async def test_bad_arguments_fail_before_any_call(
    call: Callable[[Client], object], error: type
) -> None:
    store = MemoryStore()
    client = Client(store)
    with pytest.raises(error):
        await call(client)  # type: ignore[misc]
    assert (await store.list(BARRIER)).items == ()
    assert store._revision == 0


async def test_wait_times_out_exactly_at_its_timeout_on_a_fake_clock() -> None:
    store, clock = MemoryStore(), FakeClock()
    a, b = Client(store, clock=clock), Client(store, clock=clock)
    await a.arrive_barrier("timed", expected=2)
    waiter = asyncio.ensure_future(a.wait_barrier("timed", timeout=10))
    await settle()
    await clock.advance(9.9)
    assert not waiter.done()
    await clock.advance(0.1)
    with pytest.raises(WaitTimeout, match="1 of 2"):
        await asyncio.wait_for(waiter, 5)
    # A waiter that is released before its deadline returns without time passing.
    waiter = asyncio.ensure_future(a.wait_barrier("timed", timeout=10))
    await settle()
    await b.arrive_barrier("timed")
    assert (await asyncio.wait_for(waiter, 5)).open
    await a._rt.close()
    await b._rt.close()
