"""Clocks: the monotonic one that decides expiry, and a wall clock for display.

Expiry is never judged by comparing timestamps written by other machines: an
observer measures on its own monotonic clock how long it has seen an entry
unchanged (the client-go leader-election rule), so clock skew between machines
neither steals nor freezes grants. Wall time is written only for people
reading ``kubectl get -o yaml`` (and for Lease fields client-go expects).

:class:`FakeClock` lets tests advance time deterministically.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> dt.datetime:
        """The current UTC time, for display only."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        """Wait for ``event`` until monotonic time ``until``; whether it was set."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        timeout = None if until is None else max(0.0, until - self.monotonic())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return event.is_set()
        return True


class FakeClock:
    """A clock that moves only when the test says so: ``await clock.advance(15)``.

    Expiry, renewal deadlines and timeouts then happen exactly when the test
    moves time past them, with no real sleeping. ``wall`` can be set apart from
    the monotonic time to play a machine whose clock is skewed.
    """

    def __init__(self, start: float = 1000.0, wall: dt.datetime | None = None) -> None:
        self._now = start
        self._wall = wall or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> dt.datetime:
        return self._wall + dt.timedelta(seconds=self._now)

    def set_wall(self, value: dt.datetime) -> None:
        """Pretend this machine's wall clock reads ``value`` now (skew)."""
        self._wall = value - dt.timedelta(seconds=self._now)

    def _timer(self, until: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if until <= self._now:
            fut.set_result(None)
        else:
            self._timers.append((until, fut))
        return fut

    async def sleep(self, seconds: float) -> None:
        await self._timer(self._now + max(0.0, seconds))

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        if event.is_set():
            return True
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        timer = self._timer(until) if until is not None else None
        waits: set[asyncio.Future[Any]] = {waiter} if timer is None else {waiter, timer}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if timer is not None:
                timer.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order and letting their tasks run.

        Tasks that are ready run first, at the current time (so a waiter started
        just before sees the state "now"), then each due timer fires in order.
        """
        await settle()
        target = self._now + seconds
        while True:
            pending = sorted(
                ((t, f) for t, f in self._timers if not f.done()), key=lambda tf: tf[0]
            )
            self._timers = pending
            due = [tf for tf in pending if tf[0] <= target]
            if not due:
                break
            when, fut = due[0]
            self._now = max(self._now, when)
            self._timers.remove((when, fut))
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (a few event-loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def micro_time(value: dt.datetime) -> str:
    """RFC 3339 with exactly six fractional digits, as Kubernetes MicroTime requires."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
