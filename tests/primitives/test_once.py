"""Once on every store, with real contention: one run, shared outcome, retries."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import pytest

from konductor import (
    Client,
    InvalidArgument,
    InvalidName,
    LostError,
    NotFound,
    OnceFailed,
    WaitTimeout,
)
from konductor.store import ONCE
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Test-side polling for a condition (never used by konductor itself)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def waiting_on(client: Client, name: str) -> bool:
    """Whether some caller on ``client`` has decided to wait on ``name`` (holds its watch)."""
    hub = client._rt._hubs.get((ONCE, name))
    return hub is not None and hub._watchers > 0


async def state_of(backend: Backend, name: str) -> dict[str, Any]:
    return (await backend.store.get(ONCE, name)).status


async def test_concurrent_callers_run_it_exactly_once(clients: Clients, backend: Backend) -> None:
    cs = [clients() for _ in range(3)]
    runs = 0
    calls_before_end = 0
    ended = False

    async def fn() -> str:
        nonlocal runs, ended
        runs += 1
        await asyncio.sleep(0.5)
        ended = True
        return "migrated"

    async def caller(c: Client) -> str | None:
        nonlocal calls_before_end
        if not ended:
            calls_before_end += 1
        return await c.once("migrate", fn, ttl=5, timeout=60)

    results = await asyncio.gather(*(caller(cs[i % 3]) for i in range(12)))
    assert runs == 1  # counted outside konductor
    assert results.count("migrated") == 1
    assert results.count(None) == 11
    assert calls_before_end == 12  # every caller was concurrent with the run
    status = await state_of(backend, "migrate")
    assert status["state"] == "Done"  # exactly what a gate waits for
    assert status["attempt"] == 1
    assert "run" not in status
    runner = cs[[r is not None for r in results].index(True) % 3]
    assert status["runner"] == runner.identity
    # Later callers do not run it again.
    assert await clients().once("migrate", fn) is None
    assert runs == 1
    info = await cs[0].once_status("migrate")
    assert (info.state, info.attempt, info.runner, info.done) == ("Done", 1, runner.identity, True)
    assert info.done_at is not None


async def test_a_failure_is_recorded_waiters_see_it_and_the_next_caller_retries(
    clients: Clients, backend: Backend
) -> None:
    runner, w1, w2 = clients(), clients(), clients()
    proceed = asyncio.Event()
    runs: list[str] = []

    async def failing() -> None:
        runs.append("failing")
        await proceed.wait()
        raise ValueError("schema mismatch")

    async def never() -> None:
        runs.append("waiter ran")

    first = asyncio.ensure_future(runner.once("seed", failing, ttl=5))
    await until(lambda: runs == ["failing"])
    waiters = [asyncio.ensure_future(c.once("seed", never, timeout=60)) for c in (w1, w2)]
    await until(lambda: waiting_on(w1, "seed") and waiting_on(w2, "seed"))
    proceed.set()
    with pytest.raises(ValueError, match="schema mismatch"):
        await first  # the runner gets its own exception
    for w in waiters:
        with pytest.raises(OnceFailed) as info:
            await w
        assert info.value.error == "ValueError('schema mismatch')"
        assert runner.identity in str(info.value)
    assert runs == ["failing"]  # the waiters did not run it
    status = await state_of(backend, "seed")
    assert status["state"] == "Failed"
    assert status["error"] == "ValueError('schema mismatch')"
    assert status["attempt"] == 1
    assert status["runner"] == runner.identity
    assert (await w1.once_status("seed")).error == "ValueError('schema mismatch')"

    async def succeeding() -> int:
        runs.append("retry")
        return 42

    assert await w1.once("seed", succeeding) == 42  # the next caller retries
    assert runs == ["failing", "retry"]
    status = await state_of(backend, "seed")
    assert status["state"] == "Done"
    assert status["attempt"] == 2
    assert "error" not in status
    assert await w2.once("seed", succeeding) is None


async def test_waiting_times_out_and_leaves_nothing(clients: Clients, backend: Backend) -> None:
    runner, waiter = clients(), clients()
    started, proceed = asyncio.Event(), asyncio.Event()

    async def fn() -> bool:
        started.set()
        return await proceed.wait()

    task = asyncio.ensure_future(runner.once("slow", fn, ttl=5))
    await started.wait()
    before = await state_of(backend, "slow")
    assert before["state"] == "Running"
    with pytest.raises(WaitTimeout) as info:
        await waiter.once("slow", proceed.wait, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert "slow" in str(info.value)
    with pytest.raises(WaitTimeout):
        await waiter.once("slow", proceed.wait, timeout=0)
    after = await state_of(backend, "slow")
    assert after["run"]["id"] == before["run"]["id"]
    assert after["attempt"] == 1
    assert not waiting_on(waiter, "slow")  # its watch was released
    proceed.set()
    assert await task is True
    assert (await state_of(backend, "slow"))["state"] == "Done"


async def test_a_cancelled_runner_hands_over_at_once(clients: Clients, backend: Backend) -> None:
    runner, waiter = clients(), clients()
    started, cancelled = asyncio.Event(), asyncio.Event()
    runs = 0

    async def fn() -> str:
        nonlocal runs
        runs += 1
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    async def quick() -> str:
        nonlocal runs
        runs += 1
        return "second"

    task = asyncio.ensure_future(runner.once("handover", fn, ttl=60))
    await started.wait()
    other = asyncio.ensure_future(waiter.once("handover", quick, ttl=60, timeout=60))
    await until(lambda: waiting_on(waiter, "handover"))
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert await other == "second"
    assert time.monotonic() - t0 < 30  # released, not left to expire after its 60 s TTL
    assert runs == 2
    status = await state_of(backend, "handover")
    assert (status["state"], status["attempt"], status["runner"]) == ("Done", 2, waiter.identity)


async def test_reset_allows_a_rerun_and_keeps_counting_attempts(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    runs = 0

    async def fn() -> int:
        nonlocal runs
        runs += 1
        return runs

    assert await a.once("job", fn) == 1
    before = await b.reset_once("job")
    assert before.state == "Done"
    assert (await state_of(backend, "job")) == {"state": "Pending", "attempt": 1}
    assert await b.once("job", fn) == 2
    assert (await b.once_status("job")).attempt == 2
    assert (await a.reset_once("never-ran")).state == "Pending"  # nothing to reset
    with pytest.raises(NotFound):
        await backend.store.get(ONCE, "never-ran")


async def test_reset_refuses_a_live_run_unless_forced(clients: Clients, backend: Backend) -> None:
    runner, ops = clients(), clients()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def fn() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(runner.once("stuck", fn, ttl=3))
    await started.wait()
    with pytest.raises(InvalidArgument, match="force=True"):
        await ops.reset_once("stuck")
    assert (await state_of(backend, "stuck"))["state"] == "Running"
    before = await ops.reset_once("stuck", force=True)
    assert before.state == "Running"
    assert before.runner == runner.identity
    with pytest.raises(LostError, match="not recorded as done"):
        await asyncio.wait_for(task, 30)  # at its next renewal (ttl/3)
    assert cancelled.is_set()
    assert await state_of(backend, "stuck") == {"state": "Pending", "attempt": 1}


async def test_arguments_via_partial_and_the_result_goes_to_the_runner_only(
    clients: Clients,
) -> None:
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0.2)
        return x + y

    a, b = clients(), clients()
    results = await asyncio.gather(
        a.once("sum", functools.partial(add, 2, 3)), b.once("sum", functools.partial(add, 2, 3))
    )
    assert results.count(5) == 1
    assert results.count(None) == 1


async def test_a_sync_function_is_refused_and_recorded_as_failed(
    clients: Clients, backend: Backend
) -> None:
    client = clients()
    with pytest.raises(InvalidArgument, match="async callable"):
        await client.once("sync", lambda: 42)  # type: ignore[arg-type, return-value]
    status = await state_of(backend, "sync")
    assert status["state"] == "Failed"
    assert "async callable" in status["error"]


async def test_bad_arguments_fail_before_any_api_call(clients: Clients, backend: Backend) -> None:
    client = clients()

    async def fn() -> None:
        return None

    with pytest.raises(InvalidArgument):
        await client.once("bad", "not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await client.once("bad", fn, ttl=0)
    with pytest.raises(InvalidArgument):
        await client.once("bad", fn, timeout=-1)
    with pytest.raises(InvalidName):
        await client.once("Bad_Name", fn)
    with pytest.raises(InvalidName):
        await client.once_status("Bad_Name")
    with pytest.raises(InvalidName):
        await client.reset_once("Bad_Name")
    with pytest.raises(NotFound):
        await backend.store.get(ONCE, "bad")
    status = await client.once_status("bad")  # a missing once reads as never run
    assert (status.state, status.attempt, status.runner) == ("Pending", 0, None)
    with pytest.raises(NotFound):
        await backend.store.get(ONCE, "bad")  # and reading created nothing
