"""The baseline: a polling semaphore in the style of the reference Go SDK.

It uses only the public store API and keeps its own status format (a list of
holders under ``status.pollHolders``), on its own object, so it never meets
konductor's semaphore state. Behaviour, on purpose the simple design
konductor is measured against:

* acquire = read the object (GET), and if fewer than ``permits`` holders are
  listed, write the status with one more holder (compare-and-swap PUT); on a
  409 Conflict read again and retry at once, like client-go's
  ``RetryOnConflict``;
* when the semaphore is full: sleep and poll again, 1 s first, then x1.5 per
  poll, capped at 5 s (no jitter, no watch);
* release = GET + PUT without the holder (retried on conflict the same way).

There is no TTL, renewal or fencing: it is a cost and latency yardstick, not
a safe semaphore.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from konductor import AlreadyExists, Conflict, NotFound
from konductor.store import SEMAPHORE, Store

INITIAL_DELAY = 1.0
FACTOR = 1.5
MAX_DELAY = 5.0


class PollingSemaphore:
    """One client's handle on a polling semaphore named ``name``."""

    def __init__(
        self,
        store: Store,
        name: str,
        permits: int,
        *,
        identity: str | None = None,
        initial_delay: float = INITIAL_DELAY,
        factor: float = FACTOR,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.store = store
        self.name = name
        self.permits = permits
        self.identity = identity or f"poller-{uuid.uuid4().hex[:8]}"
        self.initial_delay = initial_delay
        self.factor = factor
        self.max_delay = max_delay

    async def ensure(self) -> None:
        """Create the object (spec.permits) unless it exists."""
        try:
            await self.store.get(SEMAPHORE, self.name)
        except NotFound:
            with contextlib.suppress(AlreadyExists):
                await self.store.create(SEMAPHORE, self.name, {"permits": self.permits})

    async def try_acquire(self, holder_id: str) -> bool:
        """One poll: take a permit if there is room (retrying only on conflicts)."""
        while True:
            obj = await self.store.get(SEMAPHORE, self.name)
            holders = _holders(obj.status)
            if any(h.get("id") == holder_id for h in holders):
                return True
            if len(holders) >= self.permits:
                return False
            entry = {"id": holder_id, "holder": self.identity, "acquiredAt": time.time()}
            status = {**obj.status, "pollHolders": [*holders, entry]}
            try:
                await self.store.replace_status(SEMAPHORE, self.name, status, version=obj.version)
            except Conflict:
                continue
            return True

    async def acquire(self, on_full: Callable[[], None] | None = None) -> str:
        """Poll with backoff until a permit is taken; returns the holder id.

        ``on_full`` is called after every poll that found the semaphore full.
        """
        holder_id = uuid.uuid4().hex
        delay = self.initial_delay
        while not await self.try_acquire(holder_id):
            if on_full is not None:
                on_full()
            await asyncio.sleep(delay)
            delay = min(delay * self.factor, self.max_delay)
        return holder_id

    async def release(self, holder_id: str) -> None:
        """GET + PUT without the holder; retried on conflict; idempotent."""
        while True:
            obj = await self.store.get(SEMAPHORE, self.name)
            holders = _holders(obj.status)
            kept = [h for h in holders if h.get("id") != holder_id]
            if len(kept) == len(holders):
                return
            status = {**obj.status, "pollHolders": kept}
            try:
                await self.store.replace_status(SEMAPHORE, self.name, status, version=obj.version)
            except Conflict:
                continue
            return


def _holders(status: dict[str, Any]) -> list[dict[str, Any]]:
    value = status.get("pollHolders")
    return [dict(h) for h in value if isinstance(h, dict)] if isinstance(value, list) else []
