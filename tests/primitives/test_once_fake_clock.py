"""Once takeover and loss, exactly, with a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from konductor import Client, LostError
from konductor._engine._clock import settle
from konductor.store import ONCE, MemoryStore
from konductor.testing import FakeClock, simulate_crash
from tests.support.fakes import FlakyStore


async def test_a_crashed_runner_is_taken_over_after_exactly_its_ttl() -> None:
    store, clock = MemoryStore(), FakeClock()
    dead = Client(store, clock=clock)
    others = [Client(store, clock=clock) for _ in range(3)]
    starts: list[str] = []
    started = asyncio.Event()

    async def hang() -> None:
        starts.append("dead")
        started.set()
        await asyncio.Event().wait()

    async def work(who: str) -> str:
        starts.append(who)
        return who

    crashed = asyncio.ensure_future(dead.once("init", hang, ttl=10))
    await started.wait()
    simulate_crash(dead)
    waiters = [
        asyncio.ensure_future(c.once("init", functools.partial(work, f"w{i}"), ttl=10))
        for i, c in enumerate(others)
    ]
    await settle()  # every waiter has now seen the claim for the first time
    await clock.advance(9.9)
    assert not any(w.done() for w in waiters)
    assert starts == ["dead"]
    await clock.advance(0.2)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert len(starts) == 2  # exactly one waiter took over
    assert [r for r in results if r is not None] == [starts[1]]
    status = (await store.get(ONCE, "init")).status
    assert status["state"] == "Done"
    assert status["attempt"] == 2  # the takeover is a new attempt (fencing token)
    # The crashed process's task, ended later, must not touch the takeover's record.
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed
    assert (await store.get(ONCE, "init")).status == status


async def test_a_live_runner_is_never_taken_over_while_it_renews() -> None:
    store, clock = MemoryStore(), FakeClock()
    runner, waiter = Client(store, clock=clock), Client(store, clock=clock)
    proceed = asyncio.Event()
    runs = 0

    async def fn() -> str:
        nonlocal runs
        runs += 1
        await proceed.wait()
        return "ok"

    task = asyncio.ensure_future(runner.once("long", fn, ttl=9))
    await settle()
    other = asyncio.ensure_future(waiter.once("long", fn, ttl=9))
    for _ in range(20):  # 60 s of renewals every ~3 s: never stale
        await clock.advance(3)
    assert not other.done()
    assert runs == 1
    proceed.set()
    assert await asyncio.wait_for(task, 5) == "ok"
    # The waiter is woken by the change itself (the clock does not move).
    assert await asyncio.wait_for(other, 5) is None
    assert runs == 1


async def test_a_runner_that_cannot_renew_is_cancelled_and_never_marks_done() -> None:
    store, clock = FlakyStore(), FakeClock()
    runner, rival = Client(store, clock=clock), Client(store, clock=clock)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def fn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(runner.once("fragile", fn, ttl=9))
    await asyncio.wait_for(started.wait(), 5)
    store.down = True  # every renewal (and every other status write) fails from now on
    # Lost at 90% of the TTL after the last successful renewal was sent.
    await clock.advance(8.0)
    assert not task.done()  # retrying, still within its own deadline
    await clock.advance(0.2)
    with pytest.raises(LostError, match="not renewed within its TTL"):
        await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    store.down = False
    status = (await store.get(ONCE, "fragile")).status
    assert status["state"] == "Running"  # not Done; the claim expires for others
    runs: list[str] = []

    async def again() -> str:
        runs.append("rival")
        return "rival"

    late = asyncio.ensure_future(rival.once("fragile", again, ttl=9))
    await settle()
    await clock.advance(9.1)
    assert await asyncio.wait_for(late, 5) == "rival"
    assert runs == ["rival"]
    assert (await store.get(ONCE, "fragile")).status["attempt"] == 2


async def test_a_function_that_finishes_after_losing_its_claim_is_not_recorded() -> None:
    store, clock = FlakyStore(), FakeClock()
    runner, other = Client(store, clock=clock), Client(store, clock=clock)
    started, finish = asyncio.Event(), asyncio.Event()

    async def stubborn() -> str:
        started.set()
        while True:  # ignores the cancellation, then returns as if all went well
            try:
                await finish.wait()
                return "finished"
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(runner.once("stubborn", stubborn, ttl=9))
    await asyncio.wait_for(started.wait(), 5)
    store.down = True
    await clock.advance(9.1)  # the claim is lost by the runner's own deadline
    store.down = False
    finish.set()
    with pytest.raises(LostError, match="not recorded as done"):
        await asyncio.wait_for(task, 5)
    status = (await store.get(ONCE, "stubborn")).status
    assert status == {"state": "Pending", "attempt": 1}  # released, not Done

    async def rerun() -> str:
        return "rerun"

    assert await asyncio.wait_for(other.once("stubborn", rerun), 5) == "rerun"


async def test_renewals_keep_the_claim_about_every_third_of_the_ttl() -> None:
    store, clock = MemoryStore(), FakeClock()
    client = Client(store, clock=clock)
    proceed = asyncio.Event()
    task = asyncio.ensure_future(client.once("r", proceed.wait, ttl=9))
    await settle()
    assert client._rt.renewer.renewals == 0
    await clock.advance(3.01)
    assert client._rt.renewer.renewals == 1
    assert (await store.get(ONCE, "r")).status["run"]["renewals"] == 1
    await clock.advance(30)
    assert client._rt.renewer.renewals >= 10
    proceed.set()
    assert await asyncio.wait_for(task, 5) is True
    renewals = client._rt.renewer.renewals
    await clock.advance(30)
    assert client._rt.renewer.renewals == renewals  # nothing renewed after the run


async def test_closing_the_client_releases_a_running_claim() -> None:
    store, clock = MemoryStore(), FakeClock()
    client = Client(store, clock=clock)
    started = asyncio.Event()

    async def fn() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(client.once("closing", fn, ttl=9))
    await started.wait()
    await client.close()
    assert (await store.get(ONCE, "closing")).status == {"state": "Pending", "attempt": 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
