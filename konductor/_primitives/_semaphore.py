"""The cluster-wide semaphore: at most ``permits`` holders, first come, first served.

Built on the queued-grant engine (:mod:`._queued`) with the semaphore policy:
a request for ``count`` permits is granted when they fit and nobody is queued
ahead of it. The permit count lives in the object's spec, so ``kubectl edit``
of it applies to new grants at once (existing holders are never revoked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from konductor._engine import _queue_state as state
from konductor._engine import _validate as check
from konductor._engine._grant import Grant, Guarded
from konductor._engine._parse import Where
from konductor._engine._queued import Queued
from konductor._engine._renewal import Entry
from konductor._engine._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._engine._validate import Duration, Ttl
from konductor._errors import InvalidArgument, SemaphoreLost
from konductor._limits import MAX_PERMITS
from konductor._names import validate_name
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import SEMAPHORE

log = logging.getLogger("konductor")


class Permit(Grant):
    """Permits held on a semaphore.

    ``token`` is the fencing token: it strictly increases with every grant on
    this semaphore, so downstream systems can reject writes from a holder that
    lost its permit. ``lost`` is set when the permit is lost while held.
    """

    lost_error = SemaphoreLost
    what = "permit on semaphore"

    def __init__(self, engine: Queued[Permit], entry: Entry, grant: JSON) -> None:
        super().__init__(engine.name, int(grant["token"]), entry, engine.release)
        self.count = int(grant.get("count", 1))
        self.holder = str(grant.get("holder"))

    def __repr__(self) -> str:
        return f"<Permit {self.name!r} count={self.count} token={self.token}>"


@dataclass(frozen=True)
class SemaphoreRequest:
    """A semaphore request, parsed once at the entry point (method, decorator, adapter)."""

    name: str
    permits: int | None
    count: int
    ttl: Ttl
    timeout: float | None
    priority: int = 0

    @classmethod
    def parse(
        cls,
        name: str,
        permits: int | None,
        count: int,
        ttl: Duration,
        timeout: Duration | None = None,
        priority: int = 0,
    ) -> SemaphoreRequest:
        """Raises: InvalidArgument / InvalidName: an argument is malformed or out of range
        (``count`` above ``permits`` included); ``argument`` names it."""
        validate_name(name)
        if permits is not None:
            check.positive_int(permits, "permits", maximum=MAX_PERMITS)
        check.positive_int(count, "count", maximum=MAX_PERMITS)
        check.count_within(count, permits)
        return cls(
            name, permits, count, check.ttl(ttl), check.timeout(timeout), check.priority(priority)
        )


def make(rt: Runtime, request: SemaphoreRequest, extra: JSON | None = None) -> Queued[Permit]:
    """A semaphore acquisition site for a parsed request (no API call).

    ``extra`` is recorded on the ticket and grant as is (for adapters: see
    :func:`konductor._integration.acquire_semaphore_noted`).
    """
    name, permits, count = request.name, request.permits, request.count
    obj_namespace = rt.store.namespace

    def check_spec(obj: StoredObject) -> None:
        cluster_permits = state.permits_of(obj.spec, Where(SEMAPHORE, name, obj_namespace))
        if permits is not None and cluster_permits != permits:
            log.warning(
                "semaphore %r has permits=%d in the cluster, not %d as requested; the cluster "
                "wins (change it with kubectl edit semaphore %s)",
                name,
                cluster_permits,
                permits,
                name,
            )
        if count > cluster_permits:
            raise InvalidArgument(
                f"count={count} can never be granted: semaphore {name!r} has only "
                f"{cluster_permits} permits",
                argument="count",
            )

    return Queued(
        rt,
        SEMAPHORE,
        name,
        state.SEMAPHORE,
        Permit,
        count=count,
        ttl=request.ttl,
        create_spec=None if permits is None else {"permits": permits},
        missing_hint="pass permits=N to create it",
        check=check_spec,
        noun="semaphore",
        priority=request.priority,
        extra=extra,
    )


class SemaphoreMethods(HasRuntime):
    """The semaphore methods of :class:`konductor.Client`."""

    # -- semaphore --------------------------------------------------------------------

    def semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        priority: int = 0,
    ) -> Guarded[Permit]:
        """``async with client.semaphore("payments-api", permits=3) as permit:``.

        Created with ``permits`` if missing; if it exists the cluster's spec
        wins (a mismatch is logged). Waiters are served by ``priority`` (higher
        first, -100..100, default 0), first come first served within one
        priority; a waiter gains one level per 4 grants it waits, so none starves.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
            SemaphoreLost: (on exit) the permit was lost while the body ran;
                the body was cancelled.
        """
        request = SemaphoreRequest.parse(name, permits, count, ttl, timeout, priority)
        sem = make(self._rt, request)

        async def obtain() -> Permit:
            permit = await sem.acquire(request.timeout)
            assert permit is not None
            return permit

        return Guarded(obtain)

    async def acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        priority: int = 0,
    ) -> Permit:
        """Acquire and return a :class:`Permit`; call ``await permit.release()``.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
        """
        request = SemaphoreRequest.parse(name, permits, count, ttl, timeout, priority)
        permit = await make(self._rt, request).acquire(request.timeout)
        assert permit is not None
        return permit

    async def try_acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: Duration = DEFAULT_TTL,
    ) -> Permit | None:
        """A permit if one is free and nobody is queued ahead, else ``None`` (no wait)."""
        request = SemaphoreRequest.parse(name, permits, count, ttl)
        return await make(self._rt, request).acquire(0, blocking=False)
