"""The pytest plugin, exercised the way users meet it: in a pytest run of their own."""

from __future__ import annotations

import pytest

SAMPLE = """
import asyncio

import pytest

from konductor import AcquireTimeout, SemaphoreLost, with_semaphore
from konductor.testing import memory_client, simulate_crash


async def test_async_fixture(konductor_client):
    async with konductor_client.semaphore("jobs", permits=1) as permit:
        assert permit.token == 1
        assert await konductor_client.try_acquire_semaphore("jobs") is None


def test_sync_fixture(konductor_sync_client):
    with konductor_sync_client.semaphore("jobs", permits=2) as permit:
        assert permit.token == 1


@with_semaphore("decorated", permits=1)
def decorated():
    return "ran"


def test_decorators_use_the_memory_store(konductor_sync_client):
    assert decorated() == "ran"


async def test_fake_clock_expires_a_silent_holder(konductor_clock):
    a = memory_client(clock=konductor_clock)
    b = type(a)(a.store, clock=konductor_clock)
    held = await a.acquire_semaphore("clocked", permits=1, ttl=10)
    simulate_crash(a)  # no more renewals, nothing released
    waiter = asyncio.ensure_future(b.acquire_semaphore("clocked", ttl=10))
    await asyncio.sleep(0)
    await konductor_clock.advance(5)
    assert not waiter.done()
    await konductor_clock.advance(5.1)
    assert (await asyncio.wait_for(waiter, 5)).token > held.token


async def test_a_timeout(konductor_client):
    await konductor_client.acquire_semaphore("full", permits=1)
    with pytest.raises(AcquireTimeout):
        await konductor_client.acquire_semaphore("full", timeout=0.1)
"""


def test_plugin_fixtures_work_in_a_users_test_run(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_plugin_is_registered_by_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "konductor"]
    assert ep.value == "konductor.testing.plugin"
