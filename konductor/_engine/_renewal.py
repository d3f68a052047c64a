"""One renewal loop per client for everything the process holds or waits for.

Each registered entry is renewed at about a third of its TTL (with jitter, so
that holders that started together do not renew together); entries on the
same object are renewed in one write. A holder's own deadline is measured from
when it *sent* the attempt of its last successful renewal: if that passes
without another success, the grant is lost: its ``lost`` event is set and its
callbacks run (the guarded block is cancelled).

The deadline is enforced by this loop's own timer, never by the outcome of a
request: renewals run as tasks of their own, so a renewal that hangs (a
blackholed connection answers nothing) cannot delay the loss, and each
renewal's request is bounded by the time left to the earliest deadline it
serves. A renewal that finds the entry gone (taken away after being judged
stale) loses it at once; one whose answer arrives after the deadline changes
nothing (the grant stays lost). Failures back off but retry well within the
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from konductor import _observe as observe
from konductor._engine._clock import Clock, micro_time
from konductor._engine._hub import WRITE_FLOOR, Hub, NewState, Sends
from konductor._errors import KonductorError, NotFound
from konductor._store._base import JSON, StoredObject

log = logging.getLogger("konductor")

#: A holder gives its grant up when this fraction of the TTL has passed since it
#: sent its last successful renewal. Others may reclaim the entry only after
#: observing it unchanged for the whole TTL, which starts after that send: the
#: 10% margin makes the holder's guarded block be cancelled strictly before
#: anyone else can be granted (client-go keeps the same kind of margin with
#: RenewDeadline < LeaseDuration).
OWN_DEADLINE = 0.9

#: ``sent_at`` of an entry no write of which was confirmed yet: its deadline has passed.
NEVER = float("-inf")

RenewFn = Callable[[JSON, set[str], str], tuple[NewState, set[str]]]


@dataclass(kw_only=True, eq=False)
class SendRecord:
    """When a holder's entry was last written, as far as its owner can prove it.

    ``sent_at`` is the monotonic time the last *confirmed* write of the entry
    was sent; the holder's deadline counts from it.
    """

    sent_at: float = NEVER
    #: The earliest attempt, since the last confirmed write, that may have landed
    #: with its answer lost.
    unconfirmed: float | None = None

    def record(self, sends: Sends, *, present: bool) -> None:
        """Move ``sent_at`` after an update whose writes carried this entry.

        Only a confirmed attempt moves it forward: an unconfirmed one may not
        have landed, and others then still judge the entry by an older write.
        ``present`` says the entry is now in the store; if no write of it was
        ever confirmed, one of its own unconfirmed attempts put it there, none
        earlier than :attr:`unconfirmed`.
        """
        if sends.committed is not None:
            self.sent_at = max(self.sent_at, sends.committed)
            self.unconfirmed = None
        elif sends.first is not None and (
            self.unconfirmed is None or sends.first < self.unconfirmed
        ):
            self.unconfirmed = sends.first
        if present and self.sent_at == NEVER and self.unconfirmed is not None:
            self.sent_at = self.unconfirmed


@dataclass(eq=False)
class Entry(SendRecord):
    """Something this process keeps alive in an object's status by renewing it."""

    hub: Hub
    id: str
    ttl: float
    renew: RenewFn
    lost_reason: str | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    on_lost: list[Callable[[str], None]] = field(default_factory=list)
    #: Called with the object as written after each confirmed renewal of the entry
    #: (what a renewal decided is in force only from then on: a rate-limit share).
    on_renewed: list[Callable[[StoredObject], None]] = field(default_factory=list)
    #: Remove the entry from the store, giving up at the (monotonic) deadline passed.
    drop: Callable[[float], Awaitable[None]] | None = None
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
        self._inflight: dict[Hub, asyncio.Task[None]] = {}  # one renewal per object at a time
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
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """Stop renewing, and remove from the store every entry still registered.

        The removals run together, each given up at its entry's own deadline (or
        after WRITE_FLOOR): past it others reclaim the entry anyway, so a store
        that does not answer delays the close by that much at most, not by one
        request timeout per entry.
        """
        entries, self._entries = list(self._entries), set()
        inflight, self._inflight = list(self._inflight.values()), {}
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        now = self._clock.monotonic()

        async def drop(entry: Entry) -> None:
            assert entry.drop is not None
            try:
                await entry.drop(max(entry.deadline, now + WRITE_FLOOR))
            except Exception as exc:
                log.warning(
                    "could not release %s on close (it expires after its TTL): %s", entry.id, exc
                )

        await asyncio.gather(*(drop(e) for e in entries if e.drop is not None))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _expire(self, now: float) -> None:
        # Lost some other way (taken away, or yielded): nothing left to renew.
        self._entries -= {e for e in self._entries if e.lost_reason is not None}
        for entry in [e for e in self._entries if now >= e.deadline]:
            observe.lost(entry, observe.RENEWAL_DEADLINE)
            entry.mark_lost(
                f"not renewed within its TTL of {entry.ttl:g}s (its own deadline, "
                f"{OWN_DEADLINE:.0%} of the TTL after the last successful renewal was sent, "
                "passed: the store was unreachable, or did not answer, for that long)"
            )
            self._entries.discard(entry)

    async def _run(self) -> None:
        while self._entries:
            now = self._clock.monotonic()
            self._expire(now)
            busy = {hub for hub, task in self._inflight.items() if not task.done()}
            due: dict[Hub, list[Entry]] = defaultdict(list)
            for e in self._entries:
                if e.next_at <= now and e.hub not in busy:
                    due[e.hub].append(e)
            for hub, entries in due.items():
                task = asyncio.ensure_future(self._renew_hub(hub, entries))
                task.add_done_callback(lambda _t: self._wake.set())
                self._inflight[hub] = task
                busy.add(hub)
            for hub in [h for h, t in self._inflight.items() if t.done()]:
                del self._inflight[hub]
            if not self._entries:
                break
            # Wake for the next renewal due (entries whose object has one in
            # flight wait for it to end, which sets _wake) and, whatever the
            # requests are doing, for the earliest deadline.
            wake_at = min(
                [e.next_at for e in self._entries if e.hub not in busy]
                + [e.deadline for e in self._entries]
            )
            self._wake.clear()
            sleeper = asyncio.ensure_future(self._clock.sleep(wake_at - now))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _renew_hub(self, hub: Hub, entries: list[Entry]) -> None:
        ids = {e.id for e in entries}
        renew = entries[0].renew
        sends = Sends()

        def decide(obj: StoredObject) -> tuple[NewState, set[str]]:
            # A kind without a status (a Lease) keeps its state in its spec.
            state = obj.status if hub.kind.has_status else obj.spec
            return renew(state, ids, micro_time(self._clock.wall()))

        try:
            missing, written = await hub.update(
                decide, sends=sends, deadline=min(e.deadline for e in entries)
            )
        except NotFound:
            # The object itself was deleted (an operator's reset): every entry in it
            # is gone for good, exactly as if it had been removed. Lose them now.
            for e in entries:
                if e in self._entries and e.lost_reason is None:
                    observe.lost(e, observe.DELETED)
                    e.mark_lost(f"{hub.kind} {hub.name!r} was deleted")
                self._entries.discard(e)
            return
        except Exception as exc:
            observe.renewed(hub, False)
            for e in entries:
                e.record(sends, present=False)
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
        observe.renewed(hub, True)
        now = self._clock.monotonic()
        for e in entries:
            if e.lost_reason is not None or e not in self._entries:
                # Lost meanwhile (at its deadline, or otherwise), or released: a
                # late answer changes nothing.
                self._entries.discard(e)
                continue
            if e.id in missing:
                observe.lost(e, observe.REMOVED_BY_OTHER)
                e.mark_lost(
                    f"its entry was removed from {hub.kind} {hub.name!r} "
                    "(judged expired by another client)"
                )
                self._entries.discard(e)
            else:
                e.record(sends, present=True)
                e.failures = 0
                e.schedule(now)
                for callback in e.on_renewed:
                    try:
                        callback(written)
                    except Exception:
                        log.exception("renewed callback failed")
