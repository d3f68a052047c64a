"""The ``konductor.transitions`` logger: one structured line per important transition."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from konductor import Client
from konductor._engine._clock import FakeClock, settle
from konductor.testing import simulate_crash
from tests.observability.conftest import FlakyStore


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "konductor.transitions" and getattr(r, "konductor_event", None) == event
    ]


async def test_granted_after_waiting_released_lost_and_takeover_are_logged_with_fields(
    caplog: pytest.LogCaptureFixture,
    clients: Callable[..., Client],
    clock: FakeClock,
    store: FlakyStore,
) -> None:
    caplog.set_level(logging.INFO, logger="konductor.transitions")
    a, b = clients("a"), clients("b")
    first = await a.acquire_semaphore("jobs", permits=1, ttl=3)
    assert records(caplog, "granted") == []  # granted at once: DEBUG only
    waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", ttl=3, timeout=60))
    await settle()
    await clock.advance(2)
    await first.release()
    second = await waiter

    [granted] = records(caplog, "granted")
    assert granted.levelno == logging.INFO
    assert granted.konductor_primitive == "semaphore"  # type: ignore[attr-defined]
    assert granted.konductor_name == "jobs"  # type: ignore[attr-defined]
    assert granted.konductor_namespace == "default"  # type: ignore[attr-defined]
    assert granted.konductor_token == second.token  # type: ignore[attr-defined]
    assert granted.konductor_wait_seconds == 2.0  # type: ignore[attr-defined]
    [released] = records(caplog, "released")
    assert released.levelno == logging.INFO
    assert released.konductor_token == first.token  # type: ignore[attr-defined]
    assert released.konductor_hold_seconds == 2.0  # type: ignore[attr-defined]

    # A crashed holder's permit taken over by a waiter: one takeover line.
    simulate_crash(b)
    third = asyncio.ensure_future(a.acquire_semaphore("jobs", ttl=3, timeout=60))
    await settle()
    await clock.advance(3.1)
    taken = await third
    [takeover] = records(caplog, "takeover")
    assert takeover.konductor_name == "jobs"  # type: ignore[attr-defined]

    # A lost grant: a WARNING with its reason.
    store.fail_writes = True
    await clock.advance(3)
    assert taken.is_lost
    [lost] = records(caplog, "lost")
    assert lost.levelno == logging.WARNING
    assert lost.konductor_reason == "renewal_deadline"  # type: ignore[attr-defined]
    assert lost.konductor_token == taken.token  # type: ignore[attr-defined]
    store.fail_writes = False
    await taken.release()


async def test_nothing_per_renewal_above_debug(
    caplog: pytest.LogCaptureFixture, clients: Callable[..., Client], clock: FakeClock
) -> None:
    caplog.set_level(logging.DEBUG, logger="konductor")
    client = clients("a")
    async with client.semaphore("jobs", permits=1, ttl=3):
        await clock.advance(10)  # about ten renewals
    renewed = client._rt.renewer.renewals
    assert renewed >= 9
    renewals = [r for r in caplog.records if getattr(r, "konductor_event", "") == "renewed"]
    assert len(renewals) == renewed
    assert all(r.levelno == logging.DEBUG for r in renewals)
    # The only line above DEBUG is the release.
    above = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [getattr(r, "konductor_event", None) for r in above] == ["released"]
