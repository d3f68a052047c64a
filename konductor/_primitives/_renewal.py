"""One renewal loop per client for everything the process holds or waits for.

Each registered entry is renewed at about a third of its TTL (with jitter, so
that holders that started together do not renew together); entries on the
same object are renewed in one write. A holder's own deadline is measured from
when it *sent* its last successful renewal: if that passes without another
success, the grant is lost: its ``lost`` event is set and its callbacks run
(the guarded block is cancelled). A renewal that finds the entry gone (taken
away after being judged stale) loses it at once. Failures back off but retry
well within the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from konductor._errors import KonductorError
from konductor._primitives._clock import Clock, micro_time
from konductor._primitives._hub import Hub
from konductor._store._base import JSON, StoredObject

log = logging.getLogger("konductor")

#: A holder gives its grant up when this fraction of the TTL has passed since it
#: sent its last successful renewal. Others may reclaim the entry only after
#: observing it unchanged for the whole TTL, which starts after that send: the
#: 10% margin makes the holder's guarded block be cancelled strictly before
#: anyone else can be granted (client-go keeps the same kind of margin with
#: RenewDeadline < LeaseDuration).
OWN_DEADLINE = 0.9

RenewFn = Callable[[JSON, set[str], str], tuple[JSON | None, set[str]]]


@dataclass(eq=False)
class Entry:
    """Something this process keeps alive in an object's status by renewing it."""

    hub: Hub
    id: str
    ttl: float
    renew: RenewFn
    sent_at: float  # monotonic time the last successful write of this entry was sent
    lost_reason: str | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    on_lost: list[Callable[[str], None]] = field(default_factory=list)
    drop: Callable[[], Awaitable[None]] | None = None  # remove the entry from the store
    failures: int = 0
    next_at: float = 0.0

    @property
    def deadline(self) -> float:
        """When the holder gives the grant up if no renewal succeeded since ``sent_at``."""
        return self.sent_at + self.ttl * OWN_DEADLINE

    def schedule(self, now: float) -> None:
        delay = self.ttl / 3 * random.uniform(0.85, 1.0)
        if self.failures:
            delay = min(delay, 0.1 * 2 ** min(self.failures, 6), max(0.0, self.ttl / 10))
        self.next_at = min(now + delay, self.deadline)

    def mark_lost(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            self.lost.set()
            for callback in self.on_lost:
                try:
                    callback(reason)
                except Exception:
                    log.exception("lost callback failed")


class Renewer:
    """The renewal task of one client."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: set[Entry] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.renewals = 0  # successful renewal writes, for tests and metrics

    def add(self, entry: Entry) -> None:
        entry.schedule(self._clock.monotonic())
        self._entries.add(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()

    def remove(self, entry: Entry) -> None:
        self._entries.discard(entry)
        self._wake.set()

    def abandon(self) -> None:
        """Stop renewing and forget every entry without removing it (a simulated crash)."""
        self._entries.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """Stop renewing, and remove from the store every entry still registered."""
        entries, self._entries = list(self._entries), set()
        for entry in entries:
            if entry.drop is not None:
                try:
                    await entry.drop()
                except Exception as exc:
                    log.warning(
                        "could not release %s on close (it expires after its TTL): %s",
                        entry.id,
                        exc,
                    )
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while self._entries:
            now = self._clock.monotonic()
            for entry in [e for e in self._entries if now >= e.deadline]:
                entry.mark_lost(
                    f"not renewed within its TTL of {entry.ttl:g}s (the store was unreachable "
                    "or too slow)"
                )
                self._entries.discard(entry)
            due = [e for e in self._entries if e.next_at <= now]
            if due:
                await self._renew(due)
                continue
            if not self._entries:
                break
            wake_at = min(
                min(e.next_at for e in self._entries), *(e.deadline for e in self._entries)
            )
            self._wake.clear()
            sleeper = asyncio.ensure_future(self._clock.sleep(wake_at - now))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _renew(self, due: list[Entry]) -> None:
        by_hub: dict[Hub, list[Entry]] = defaultdict(list)
        for e in due:
            by_hub[e.hub].append(e)
        await asyncio.gather(*(self._renew_hub(hub, entries) for hub, entries in by_hub.items()))

    async def _renew_hub(self, hub: Hub, entries: list[Entry]) -> None:
        ids = {e.id for e in entries}
        renew = entries[0].renew
        sent = self._clock.monotonic()

        def mark_sent() -> None:
            nonlocal sent
            sent = self._clock.monotonic()

        def decide(obj: StoredObject) -> tuple[JSON | None, set[str]]:
            # A kind without a status (a Lease) keeps its state in its spec.
            state = obj.status if hub.kind.has_status else obj.spec
            return renew(state, ids, micro_time(self._clock.wall()))

        try:
            missing, _ = await hub.update(decide, on_sent=mark_sent)
        except Exception as exc:
            if isinstance(exc, KonductorError):
                log.warning("renewal of %s %r failed: %s", hub.kind, hub.name, exc)
            else:
                log.exception("renewal of %s %r failed", hub.kind, hub.name)
            now = self._clock.monotonic()
            for e in entries:
                e.failures += 1
                e.schedule(now)
            return
        self.renewals += 1
        now = self._clock.monotonic()
        for e in entries:
            if e.id in missing:
                e.mark_lost(
                    f"its entry was removed from {hub.kind} {hub.name!r} "
                    "(judged expired by another client)"
                )
                self._entries.discard(e)
            else:
                e.sent_at = sent
                e.failures = 0
                e.schedule(now)
