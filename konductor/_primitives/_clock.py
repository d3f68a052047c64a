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
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> dt.datetime:
        """The current UTC time, for display only."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def micro_time(value: dt.datetime) -> str:
    """RFC 3339 with exactly six fractional digits, as Kubernetes MicroTime requires."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
