"""Every konductor metric, read from a registry of its own after scripted sequences.

On the memory store with a fake clock, so that waits, holds, renewals and
losses happen exactly when the test moves time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import konductor.metrics
from konductor import AcquireTimeout, Client, LeaseLost, SemaphoreLost
from konductor._engine._clock import FakeClock, settle
from konductor._store._kinds import LEASE, SEMAPHORE
from konductor.testing import simulate_crash
from tests.observability.conftest import FlakyStore

SEM = {"primitive": "semaphore", "name": "jobs", "namespace": "default"}


def value(reg: CollectorRegistry, metric: str, /, **labels: str) -> float:
    got = reg.get_sample_value(metric, labels)
    assert got is not None, f"no sample {metric}{labels}"
    return got


async def test_a_grant_is_held_measured_and_released(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock
) -> None:
    client = clients("a")
    async with client.semaphore("jobs", permits=2, ttl=15):
        assert value(registry, "konductor_held", **SEM) == 1
        assert value(registry, "konductor_waiting", **SEM) == 0
        await clock.advance(6)  # one renewal (due at 4.25..5 s, the next after 8.5 s)
        assert value(registry, "konductor_renewals_total", **SEM) == 1
    assert value(registry, "konductor_held", **SEM) == 0
    assert value(registry, "konductor_acquisitions_total", **SEM, result="granted") == 1
    assert value(registry, "konductor_acquire_wait_seconds_count", **SEM) == 1
    assert value(registry, "konductor_acquire_wait_seconds_sum", **SEM) == 0  # no time passed
    assert value(registry, "konductor_hold_seconds_count", **SEM) == 1
    assert value(registry, "konductor_hold_seconds_sum", **SEM) == 6.0
    assert value(registry, "konductor_renewal_failures_total", **SEM) == 0
    for reason in konductor.metrics.LOST_REASONS:  # every series exists from the start, at 0
        assert value(registry, "konductor_lost_total", **SEM, reason=reason) == 0


async def test_a_waiter_is_counted_while_it_waits_and_its_wait_is_observed(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock
) -> None:
    a, b = clients("a"), clients("b")
    permit = await a.acquire_semaphore("jobs", permits=1)
    waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", timeout=60))
    await settle()
    assert value(registry, "konductor_waiting", **SEM) == 1
    assert value(registry, "konductor_held", **SEM) == 1
    await clock.advance(4)
    await permit.release()
    second = await waiter
    assert value(registry, "konductor_waiting", **SEM) == 0
    assert value(registry, "konductor_held", **SEM) == 1
    assert value(registry, "konductor_acquisitions_total", **SEM, result="granted") == 2
    assert value(registry, "konductor_acquire_wait_seconds_sum", **SEM) == 4.0
    # Bucket counts are cumulative: the 4 s wait is above 2.5 s and within 5 s.
    assert value(registry, "konductor_acquire_wait_seconds_bucket", **SEM, le="2.5") == 1
    assert value(registry, "konductor_acquire_wait_seconds_bucket", **SEM, le="5.0") == 2
    await second.release()
    assert value(registry, "konductor_held", **SEM) == 0


async def test_timeout_cancel_and_busy_are_counted_by_result(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock
) -> None:
    a, b = clients("a"), clients("b")
    permit = await a.acquire_semaphore("jobs", permits=1)
    timing_out = asyncio.ensure_future(b.acquire_semaphore("jobs", timeout=10))
    cancelled = asyncio.ensure_future(b.acquire_semaphore("jobs"))
    await settle()
    assert value(registry, "konductor_waiting", **SEM) == 2
    await clock.advance(10)
    with pytest.raises(AcquireTimeout):
        await timing_out
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await b.try_acquire_semaphore("jobs") is None
    assert value(registry, "konductor_waiting", **SEM) == 0
    assert value(registry, "konductor_acquisitions_total", **SEM, result="timeout") == 1
    assert value(registry, "konductor_acquisitions_total", **SEM, result="cancelled") == 1
    assert value(registry, "konductor_acquisitions_total", **SEM, result="busy") == 1
    assert value(registry, "konductor_acquisitions_total", **SEM, result="granted") == 1
    # Only granted acquisitions are in the wait histogram.
    assert value(registry, "konductor_acquire_wait_seconds_count", **SEM) == 1
    await permit.release()


async def test_a_grant_not_renewed_in_time_is_lost_by_renewal_deadline(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock, store: FlakyStore
) -> None:
    client = clients("a")
    with pytest.raises(SemaphoreLost):
        async with client.semaphore("jobs", permits=1, ttl=3):
            store.fail_writes = True
            await clock.advance(3)  # its own deadline is 2.7 s after the last renewal
            await asyncio.sleep(30)  # cancelled by the loss
    await clock.advance(0)  # the advance was cut short by the loss: fire what is due
    store.fail_writes = False
    assert value(registry, "konductor_lost_total", **SEM, reason="renewal_deadline") == 1
    assert value(registry, "konductor_lost_total", **SEM, reason="removed_by_other") == 0
    assert value(registry, "konductor_renewal_failures_total", **SEM) >= 1
    assert value(registry, "konductor_renewals_total", **SEM) == 0
    assert value(registry, "konductor_held", **SEM) == 0
    assert value(registry, "konductor_hold_seconds_count", **SEM) == 1


async def test_a_grant_removed_by_another_client_is_lost_so(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock, store: FlakyStore
) -> None:
    client = clients("a")
    with pytest.raises(SemaphoreLost):
        async with client.semaphore("jobs", permits=1, ttl=3):
            obj = await store.get(SEMAPHORE, "jobs")
            # What a client that judged the holder expired writes: the holder gone.
            await store.replace_status(
                SEMAPHORE, "jobs", {**obj.status, "holders": []}, version=obj.version
            )
            await clock.advance(1.1)  # the next renewal finds the entry missing
            await asyncio.sleep(30)
    await clock.advance(0)
    assert value(registry, "konductor_lost_total", **SEM, reason="removed_by_other") == 1
    assert value(registry, "konductor_held", **SEM) == 0


async def test_a_grant_whose_object_is_deleted_is_lost_so(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock, store: FlakyStore
) -> None:
    client = clients("a")
    with pytest.raises(SemaphoreLost):
        async with client.semaphore("jobs", permits=1, ttl=3):
            await store.delete(SEMAPHORE, "jobs")
            await clock.advance(1.1)
            await asyncio.sleep(30)
    await clock.advance(0)
    assert value(registry, "konductor_lost_total", **SEM, reason="deleted") == 1


async def test_a_takeover_of_an_expired_holder_is_counted(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock
) -> None:
    dead, b = clients("dead"), clients("b")
    await dead.acquire_semaphore("jobs", permits=1, ttl=3)
    simulate_crash(dead)
    waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", ttl=3, timeout=60))
    await settle()
    assert value(registry, "konductor_takeovers_total", **SEM) == 0
    await clock.advance(3.1)  # b has now seen the dead holder unchanged for its TTL
    permit = await waiter
    assert value(registry, "konductor_takeovers_total", **SEM) == 1
    await permit.release()


async def test_leader_election_master_status_follows_leadership_and_yield(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock, store: FlakyStore
) -> None:
    client = clients("a")
    lease_labels = {"primitive": "lease", "name": "leader", "namespace": "default"}
    with pytest.raises(LeaseLost):
        async with client.lease("leader", ttl=3):
            assert value(registry, "leader_election_master_status", name="leader") == 1
            assert value(registry, "konductor_held", **lease_labels) == 1
            obj = await store.get(LEASE, "leader")
            await store.replace_spec(
                LEASE, "leader", {**obj.spec, "preferredHolder": "b"}, version=obj.version
            )
            await clock.advance(1.1)  # the next renewal sees the preferred holder and yields
            await asyncio.sleep(30)
    await clock.advance(0)
    assert value(registry, "leader_election_master_status", name="leader") == 0
    assert value(registry, "konductor_lost_total", **lease_labels, reason="preferred_holder") == 1
    assert value(registry, "konductor_held", **lease_labels) == 0


async def test_watch_resumptions_are_counted_as_reconnects(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock, store: FlakyStore
) -> None:
    a, b = clients("a"), clients("b")
    permit = await a.acquire_semaphore("jobs", permits=1)
    store.fail_watches = 1  # the first watch stream of the waiter fails once
    waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", timeout=60))
    for _ in range(100):  # the watch resumes after a real 0.1 s backoff
        if (registry.get_sample_value("konductor_watch_reconnects_total", SEM) or 0) >= 1:
            break
        await asyncio.sleep(0.05)
    assert value(registry, "konductor_watch_reconnects_total", **SEM) == 1
    await permit.release()
    await (await waiter).release()


async def test_instrument_is_idempotent_and_uninstrument_removes_every_metric() -> None:
    reg = CollectorRegistry()
    first = konductor.metrics.instrument(reg)
    assert konductor.metrics.instrument(reg) is first
    assert b"konductor_held" in generate_latest(reg)
    konductor.metrics.uninstrument(reg)
    assert generate_latest(reg) == b""
    konductor.metrics.uninstrument(reg)  # idempotent
    # After uninstrument nothing is measured into it.
    from konductor.testing import memory_client

    async with memory_client() as client, client.semaphore("x", permits=1):
        pass
    assert generate_latest(reg) == b""


async def test_a_lease_taken_over_from_a_crashed_leader_is_counted(
    registry: CollectorRegistry, clients: Callable[..., Client], clock: FakeClock
) -> None:
    dead, b = clients("dead"), clients("b")
    lease_labels = {"primitive": "lease", "name": "leader", "namespace": "default"}
    await dead.acquire_lease("leader", ttl=3)
    simulate_crash(dead)
    waiter = asyncio.ensure_future(b.acquire_lease("leader", ttl=3, timeout=60))
    await settle()
    # Both clients are in this process: the gauge is 1 while the dead one "leads".
    assert value(registry, "leader_election_master_status", name="leader") == 1
    await clock.advance(3.1)
    lease = await waiter
    assert value(registry, "konductor_takeovers_total", **lease_labels) == 1
    await lease.release()
    assert value(registry, "leader_election_master_status", name="leader") == 0


async def test_a_grant_made_before_instrument_is_not_counted_when_released(
    clients: Callable[..., Client],
) -> None:
    client = clients("a")
    early = await client.acquire_semaphore("jobs", permits=2)
    reg = CollectorRegistry()
    konductor.metrics.instrument(reg)
    try:
        late = await client.acquire_semaphore("jobs")
        await early.release()  # made before: not counted, never below zero
        assert value(reg, "konductor_held", **SEM) == 1
        await late.release()
        assert value(reg, "konductor_held", **SEM) == 0
        assert value(reg, "konductor_hold_seconds_count", **SEM) == 1
    finally:
        konductor.metrics.uninstrument(reg)
