"""The cluster-wide semaphore: acquire, wait, hold, renew, release.

Every decision is a pure transition from :mod:`._semaphore_state` applied by
compare-and-swap; this module adds the waiting (watch-driven, waking at the
earliest moment a blocking entry could expire), the holder handle with its
fencing token and ``lost`` signal, and the clean-up that makes a cancelled or
timed-out acquire leave no ticket and no grant behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from konductor._errors import (
    AcquireTimeout,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    SemaphoreLost,
)
from konductor._names import validate_name
from konductor._primitives import _semaphore_state as state
from konductor._primitives import _validate as check
from konductor._primitives._clock import micro_time
from konductor._primitives._hub import Hub, entries_of
from konductor._primitives._renewal import Entry
from konductor._primitives._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import SEMAPHORE

log = logging.getLogger("konductor")
_ENTRIES = entries_of("holders", "queue")


class Permit:
    """Permits held on a semaphore.

    ``token`` is the fencing token: it strictly increases with every grant on
    this semaphore, so downstream systems can reject writes from a holder that
    lost its permit. ``lost`` is set when the permit is lost while held.
    """

    def __init__(self, sem: _Semaphore, entry: Entry, grant: JSON) -> None:
        self._sem = sem
        self._entry = entry
        self.name = sem.name
        self.count = int(grant.get("count", 1))
        self.token = int(grant["token"])
        self.holder = str(grant.get("holder"))
        self.id = entry.id
        self.released = False

    @property
    def lost(self) -> asyncio.Event:
        return self._entry.lost

    @property
    def is_lost(self) -> bool:
        return self._entry.lost.is_set()

    def ensure_held(self) -> None:
        """Raise :class:`SemaphoreLost` if the permit was lost (or released)."""
        if self._entry.lost_reason is not None:
            raise SemaphoreLost(
                f"permit on semaphore {self.name!r} (token {self.token}) was lost: "
                f"{self._entry.lost_reason}"
            )
        if self.released:
            raise SemaphoreLost(f"permit on semaphore {self.name!r} was released")

    async def release(self) -> None:
        """Give the permits back. Idempotent; never raises for a permit already gone."""
        if self.released:
            return
        self.released = True
        await self._sem.release(self._entry)

    def __repr__(self) -> str:
        return f"<Permit {self.name!r} count={self.count} token={self.token}>"


class _Semaphore:
    def __init__(self, rt: Runtime, name: str, permits: int | None, count: int, ttl: float) -> None:
        self.rt = rt
        self.name = name
        self.permits = permits
        self.count = count
        self.ttl = ttl
        self.hub: Hub = rt.hub(SEMAPHORE, name, _ENTRIES)

    async def ensure(self) -> StoredObject:
        """The semaphore's object, created with ``permits`` if it does not exist."""
        obj = await self.hub.current()
        if obj is None:
            if self.permits is None:
                raise NotFound(
                    f"semaphore {self.name!r} does not exist in namespace "
                    f"{self.rt.store.namespace!r}; pass permits=N to create it"
                )
            try:
                obj = await self.rt.store.create(SEMAPHORE, self.name, {"permits": self.permits})
                self.hub.observe(obj)
            except AlreadyExists:
                obj = await self.hub.refresh()
                if obj is None:  # deleted again in between
                    return await self.ensure()
        cluster_permits = int(obj.spec.get("permits", 0))
        if self.permits is not None and cluster_permits != self.permits:
            log.warning(
                "semaphore %r has permits=%d in the cluster, not %d as requested; the cluster "
                "wins (change it with kubectl edit semaphore %s)",
                self.name,
                cluster_permits,
                self.permits,
                self.name,
            )
        if self.count > cluster_permits:
            raise InvalidArgument(
                f"count={self.count} can never be granted: semaphore {self.name!r} has only "
                f"{cluster_permits} permits"
            )
        return obj

    def _decide(
        self, req: state.Request, enqueue: bool
    ) -> Callable[[StoredObject], tuple[JSON | None, JSON | None]]:
        def decide(obj: StoredObject) -> tuple[JSON | None, JSON | None]:
            permits = int(obj.spec.get("permits", 0))
            stale = self.hub.stale(obj)
            stale.discard(req.id)
            outcome = state.acquire(
                obj.status, permits, req, stale, micro_time(self.rt.clock.wall()), enqueue=enqueue
            )
            return outcome.status, outcome.granted

        return decide

    def _entry(self, req_id: str) -> Entry:
        def renew(status: JSON, ids: set[str], wall: str) -> tuple[JSON | None, set[str]]:
            outcome, missing = state.renew(status, ids, wall)
            return outcome.status, missing

        return Entry(
            self.hub,
            req_id,
            self.ttl,
            renew,
            sent_at=self.rt.clock.monotonic(),
            drop=lambda: self._remove(req_id),
        )

    async def acquire(self, timeout: float | None, *, blocking: bool = True) -> Permit | None:
        await self.ensure()
        clock = self.rt.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        req = state.Request(uuid.uuid4().hex, self.rt.identity, self.count, self.ttl)
        entry = self._entry(req.id)

        def sent() -> None:
            entry.sent_at = clock.monotonic()

        registered = watching = refreshed = False
        try:
            while True:
                seen = self.hub.changes
                grant, obj = await self.hub.update(self._decide(req, blocking), on_sent=sent)
                if grant is not None:
                    if entry.lost_reason is not None:  # the ticket's entry, lost meanwhile
                        sent_at = entry.sent_at
                        entry = self._entry(req.id)
                        entry.sent_at = sent_at
                        registered = False
                    if not registered:
                        self.rt.renewer.add(entry)
                    return Permit(self, entry, grant)
                if not blocking:
                    if not refreshed and self.hub.changes == seen:
                        # Decided on a cached object that wrote nothing, so no CAS
                        # could tell it was stale: read once and decide again.
                        refreshed = True
                        await self.hub.refresh()
                        continue
                    return None
                if not registered:  # our queue ticket is renewed while we wait
                    self.rt.renewer.add(entry)
                    registered = True
                if not watching:
                    self.hub.retain_watch()
                    watching = True
                now = clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise AcquireTimeout(
                        f"semaphore {self.name!r}: no permit within {timeout:g}s "
                        f"({obj.status.get('inUse', 0)}/{obj.spec.get('permits')} in use, "
                        f"{obj.status.get('waiting', 0)} waiting)"
                    )
                wake = min(
                    (
                        self.hub.tracker.expires_at(e)
                        for e in state.blocking_entries(obj.status, req.id)
                    ),
                    default=float("inf"),
                )
                if deadline is not None:
                    wake = min(wake, deadline)
                if entry.lost_reason is not None:  # our ticket was dropped: queue again
                    entry = self._entry(req.id)
                    self.rt.renewer.add(entry)
                await self.hub.wait_change(seen, None if wake == float("inf") else wake)
        except BaseException:
            self.rt.renewer.remove(entry)
            # Leave nothing behind: no ticket, and no grant a write may have made
            # even if its response never reached us. Shielded, so that a second
            # cancellation cannot interrupt the clean-up.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._remove(req.id))
            raise
        finally:
            if watching:
                self.hub.release_watch()

    async def _remove(self, req_id: str) -> None:
        def decide(obj: StoredObject) -> tuple[JSON | None, None]:
            return state.release(obj.status, {req_id}, self.hub.stale(obj)).status, None

        with contextlib.suppress(NotFound):
            await self.hub.update(decide)

    async def release(self, entry: Entry) -> None:
        self.rt.renewer.remove(entry)
        await self._remove(entry.id)


class SemaphoreContext:
    """``async with client.semaphore(...) as permit``: acquire, guard, release.

    If the permit is lost while the body runs, the body is cancelled and the
    exit raises :class:`SemaphoreLost`.
    """

    def __init__(self, sem: _Semaphore, timeout: float | None) -> None:
        self._sem = sem
        self._timeout = timeout
        self._permit: Permit | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled_by_us = False

    async def __aenter__(self) -> Permit:
        permit = await self._sem.acquire(self._timeout)
        assert permit is not None
        self._permit = permit
        self._task = asyncio.current_task()
        permit._entry.on_lost.append(self._on_lost)
        return permit

    def _on_lost(self, reason: str) -> None:
        if self._task is not None and not self._task.done():
            self._cancelled_by_us = True
            self._task.cancel(f"konductor: permit lost: {reason}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._permit
        assert permit is not None
        with contextlib.suppress(ValueError):
            permit._entry.on_lost.remove(self._on_lost)
        try:
            await asyncio.shield(permit.release())
        except Exception:
            log.warning("could not release semaphore %r; it expires after its TTL", permit.name)
        if permit.is_lost:
            if self._cancelled_by_us and self._task is not None:
                self._task.uncancel()
            raise SemaphoreLost(
                f"permit on semaphore {permit.name!r} (token {permit.token}) was lost while "
                f"held: {permit._entry.lost_reason}; the guarded block was cancelled"
            ) from exc


def make(rt: Runtime, name: str, permits: int | None, count: int, ttl: object) -> _Semaphore:
    validate_name(name)
    if permits is not None:
        check.positive_int(permits, "permits")
    check.positive_int(count, "count")
    if permits is not None and count > permits:
        raise InvalidArgument(f"count={count} is more than permits={permits}")
    return _Semaphore(rt, name, permits, count, check.ttl(ttl))


class SemaphoreMethods(HasRuntime):
    """The semaphore methods of :class:`konductor.Client`."""

    # -- semaphore --------------------------------------------------------------------

    def semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> SemaphoreContext:
        """``async with client.semaphore("payments-api", permits=3) as permit:``.

        Created with ``permits`` if missing; if it exists the cluster's spec
        wins (a mismatch is logged). Waiters are served first come, first served.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
            SemaphoreLost: (on exit) the permit was lost while the body ran;
                the body was cancelled.
        """
        sem = make(self._rt, name, permits, count, ttl)
        return SemaphoreContext(sem, check.timeout(timeout))

    async def acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> Permit:
        """Acquire and return a :class:`Permit`; call ``await permit.release()``.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
        """
        sem = make(self._rt, name, permits, count, ttl)
        permit = await sem.acquire(check.timeout(timeout))
        assert permit is not None
        return permit

    async def try_acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
    ) -> Permit | None:
        """A permit if one is free and nobody is queued ahead, else ``None`` (no wait)."""
        sem = make(self._rt, name, permits, count, ttl)
        return await sem.acquire(0, blocking=False)
