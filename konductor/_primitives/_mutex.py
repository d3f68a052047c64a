"""Cluster-wide mutex (exclusive, fair) and read-write mutex (writer-preferring).

Both run on the queued-grant engine (:mod:`._queued`): a mutex is one holder at
a time in arrival order; a read-write mutex admits many readers or one writer,
and a waiting writer stops new readers from overtaking it so writers never
starve. Each lock carries a fencing token that increases with every grant.
"""

from __future__ import annotations

from konductor._engine import _queue_state as state
from konductor._engine import _validate as check
from konductor._engine._grant import Grant, Guarded
from konductor._engine._queued import Queued
from konductor._engine._renewal import Entry
from konductor._engine._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._engine._validate import Duration, Ttl
from konductor._errors import MutexLost
from konductor._names import validate_name
from konductor._store._base import JSON
from konductor._store._kinds import MUTEX, RWMUTEX


class Lock(Grant):
    """A held mutex or read-write mutex lock (``mode``: exclusive, read or write)."""

    lost_error = MutexLost

    def __init__(self, engine: Queued[Lock], entry: Entry, grant: JSON) -> None:
        super().__init__(engine.name, int(grant["token"]), entry, engine.release)
        self.mode = str(grant.get("mode", state.EXCLUSIVE))
        self.holder = str(grant.get("holder"))
        self.what = "mutex" if self.mode == state.EXCLUSIVE else f"{self.mode} lock on rwmutex"

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} mode={self.mode} token={self.token}>"


def _engine(rt: Runtime, name: str, mode: str, ttl: Ttl, priority: int = 0) -> Queued[Lock]:
    exclusive = mode == state.EXCLUSIVE
    return Queued(
        rt,
        MUTEX if exclusive else RWMUTEX,
        name,
        state.MUTEX if exclusive else state.RWMUTEX,
        Lock,
        count=1,
        ttl=ttl,
        mode=mode,
        create_spec={},
        noun="mutex" if exclusive else "rwmutex",
        priority=priority,
    )


async def _obtain(engine: Queued[Lock], timeout: float | None) -> Lock:
    lock = await engine.acquire(timeout)
    assert lock is not None
    return lock


class MutexMethods(HasRuntime):
    """The mutex and read-write mutex methods of :class:`konductor.Client`."""

    def _lock(
        self, name: str, mode: str, ttl: Duration, timeout: Duration | None, priority: int = 0
    ) -> Guarded[Lock]:
        engine = _engine(
            self._rt, validate_name(name), mode, check.ttl(ttl), check.priority(priority)
        )
        wait = check.timeout(timeout)
        return Guarded(lambda: _obtain(engine, wait))

    def mutex(
        self,
        name: str,
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        priority: int = 0,
    ) -> Guarded[Lock]:
        """``async with client.mutex("reindex") as lock:``: exclusive, first come first served.

        Created if missing. ``lock.token`` is the fencing token. Waiters are
        served by ``priority`` (higher first, -100..100), first come first
        served within one; a waiter gains one level per 4 grants it waits.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: not locked within ``timeout`` seconds.
            MutexLost: (on exit) the lock was lost while held; the body was cancelled.
        """
        return self._lock(name, state.EXCLUSIVE, ttl, timeout, priority)

    def read_lock(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Guarded[Lock]:
        """``async with client.read_lock("config"):`` shared with other readers.

        Waits while a writer holds the rwmutex or is queued ahead.

        Raises:
            AcquireTimeout, MutexLost, InvalidArgument: as for :meth:`mutex`.
        """
        return self._lock(name, state.READ, ttl, timeout)

    def write_lock(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Guarded[Lock]:
        """``async with client.write_lock("config"):`` exclusive of readers and writers.

        Raises:
            AcquireTimeout, MutexLost, InvalidArgument: as for :meth:`mutex`.
        """
        return self._lock(name, state.WRITE, ttl, timeout)

    async def acquire_mutex(
        self,
        name: str,
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
        priority: int = 0,
    ) -> Lock:
        """Lock and return the :class:`Lock`; call ``await lock.release()``."""
        engine = _engine(
            self._rt,
            validate_name(name),
            state.EXCLUSIVE,
            check.ttl(ttl),
            check.priority(priority),
        )
        return await _obtain(engine, check.timeout(timeout))

    async def try_acquire_mutex(self, name: str, *, ttl: Duration = DEFAULT_TTL) -> Lock | None:
        """The lock if it is free and nobody is queued, else ``None`` (no wait, no ticket)."""
        engine = _engine(self._rt, validate_name(name), state.EXCLUSIVE, check.ttl(ttl))
        return await engine.acquire(0, blocking=False)

    async def acquire_read_lock(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Lock:
        """A read lock on the rwmutex; call ``await lock.release()``."""
        engine = _engine(self._rt, validate_name(name), state.READ, check.ttl(ttl))
        return await _obtain(engine, check.timeout(timeout))

    async def acquire_write_lock(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Lock:
        """A write lock on the rwmutex; call ``await lock.release()``."""
        engine = _engine(self._rt, validate_name(name), state.WRITE, check.ttl(ttl))
        return await _obtain(engine, check.timeout(timeout))
