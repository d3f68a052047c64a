"""Leader election on the built-in ``coordination.k8s.io/v1`` Lease.

The rules are client-go's (:mod:`._lease_state`), so a Go service using
client-go's ``leaderelection`` and a Python service using konductor can
contend for the same Lease. This module adds:

- waiting that is watch-driven: a candidate sleeps until the Lease changes
  (a release wakes it at once) or until the moment the current record would
  have been seen unchanged for ``leaseDurationSeconds`` on this observer's
  monotonic clock, never on a fixed poll interval (client-go polls);
- renewal through the client's :class:`Renewer` (about every ttl/3) and loss
  at the holder's own deadline (when it *sent* its last successful renewal
  plus the duration), which cancels the guarded body;
- serialization of the acquisitions of one client: the Lease records one
  ``holderIdentity`` per client, so two tasks of the same client take turns
  locally before contending in the cluster;
- :meth:`LeaseMethods.campaign`, which keeps a coroutine running while this
  client is the leader and campaigns again when leadership is lost;
- yielding to ``spec.preferredHolder`` (Kubernetes 1.31+ coordinated leader
  election): a holder that finds another identity named there stops renewing
  and loses the grant at once (the body is cancelled), and releases the Lease
  when the body has ended, so the named one can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._engine import _validate as check
from konductor._engine._clock import Clock, micro_time
from konductor._engine._grant import Grant, Guarded
from konductor._engine._hub import WRITE_FLOOR, Hub, Sends
from konductor._engine._renewal import OWN_DEADLINE, Entry, SendRecord
from konductor._engine._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._engine._validate import Duration
from konductor._errors import (
    AcquireTimeout,
    AlreadyExists,
    InvalidArgument,
    LeaseLost,
    NotFound,
    StoreUnavailable,
)
from konductor._names import validate_name
from konductor._primitives import _lease_state as state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import LEASE

log = logging.getLogger("konductor")
T = TypeVar("T")


def _entries(obj: StoredObject) -> list[JSON]:
    return state.holder_entries(obj.spec)


class Lease(Grant):
    """Leadership held on a Lease.

    ``token`` is ``leaseTransitions`` after this client took the lease: it
    increases every time the holder changes, so downstream systems can use it
    as a fencing token. ``holder`` is the ``holderIdentity`` written (the
    client's identity), ``ttl`` the ``leaseDurationSeconds`` (whole seconds).
    ``lost`` is set when leadership is lost while held.
    """

    lost_error = LeaseLost
    what = "lease"

    def __init__(self, site: _LeaseSite, entry: Entry, token: int) -> None:
        super().__init__(site.name, token, entry, site.release)
        self.holder = site.rt.identity
        self.ttl = site.duration

    def __repr__(self) -> str:
        return f"<Lease {self.name!r} holder={self.holder!r} token={self.token}>"


class _Owner:
    """One acquisition's claim on a :class:`_LocalSlot` (compared by identity)."""


class _LocalSlot:
    """At most one acquisition or grant per (client, lease) at a time."""

    def __init__(self) -> None:
        self.owner: _Owner | None = None
        self._freed = asyncio.Event()

    def free(self, owner: _Owner) -> None:
        if self.owner is owner:
            self.owner = None
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()

    async def wait(self, clock: Clock, until: float | None) -> None:
        await clock.wait(self._freed, until)


_SLOTS: weakref.WeakKeyDictionary[Hub, _LocalSlot] = weakref.WeakKeyDictionary()


class _LeaseSite:
    """One client's view of one Lease: acquire, renew, release."""

    def __init__(self, rt: Runtime, name: str, duration: int) -> None:
        self.rt = rt
        self.name = name
        self.duration = duration
        self.hub: Hub = rt.hub(LEASE, name, _entries)
        slot = _SLOTS.get(self.hub)
        if slot is None:
            slot = _SLOTS[self.hub] = _LocalSlot()
        self.slot = slot
        self._held: dict[Entry, tuple[_Owner, int]] = {}  # grant -> (slot owner, token)

    def _wall(self) -> str:
        return micro_time(self.rt.clock.wall())

    def _decide(self) -> Callable[[StoredObject], tuple[JSON | None, int | None]]:
        def decide(obj: StoredObject) -> tuple[JSON | None, int | None]:
            holder = state.parse(obj.spec).holder
            expired = holder is not None and holder in self.hub.stale(obj)
            out = state.acquire(
                obj.spec, self.rt.identity, self.duration, self._wall(), expired=expired
            )
            observe.took_over(f"{self.rt.identity}#{out.token}", expired)
            return out.spec, out.token

        return decide

    def _describe(self, obj: StoredObject | None) -> str:
        if obj is None:
            return "it does not exist"
        rec = state.parse(obj.spec)
        if rec.preferred is not None and rec.preferred != self.rt.identity:
            return f"spec.preferredHolder names {rec.preferred!r}; clear it to let others lead"
        if rec.holder is None:
            return "nobody holds it"
        if rec.holder == self.rt.identity:
            return "held by another task of this client"
        return f"held by {rec.holder!r}, leaseDurationSeconds={rec.duration}"

    async def _take_slot(self, owner: _Owner, deadline: float | None, blocking: bool) -> bool:
        clock = self.rt.clock
        while self.slot.owner is not None:
            if not blocking:
                return False
            if deadline is not None and clock.monotonic() >= deadline:
                return False
            await self.slot.wait(clock, deadline)
        self.slot.owner = owner
        return True

    @observe.acquisition
    async def acquire(self, timeout: float | None, *, blocking: bool = True) -> Lease | None:
        """Wait (watch-driven) until this client holds the lease.

        ``None`` only for a non-blocking try that found it held.

        Raises:
            AcquireTimeout: not acquired within ``timeout``; the Lease is unchanged.
        """
        clock = self.rt.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        owner = _Owner()
        if not await self._take_slot(owner, deadline, blocking):
            if not blocking:
                return None
            raise AcquireTimeout(
                f"lease {self.name!r}: not acquired within {timeout:g}s "
                "(held by another task of this client)"
            )
        track = SendRecord()  # when our writes of the record were sent
        written = False  # a grant write may have been applied

        granted = watching = refreshed = False
        try:
            while True:
                seen = self.hub.changes
                obj = await self.hub.current()
                token: int | None
                sends = Sends()
                if obj is None:
                    sends.sent(clock.monotonic())
                    written = True
                    try:
                        obj = await self.rt.store.create(
                            LEASE,
                            self.name,
                            state.create(self.rt.identity, self.duration, self._wall()),
                        )
                    except AlreadyExists:
                        await self.hub.refresh()
                        continue
                    except BaseException:
                        track.record(sends, present=False)
                        raise
                    sends.committed = sends.first
                    self.hub.observe(obj)
                    token = 0
                else:
                    try:
                        token, obj = await self.hub.update(self._decide(), sends=sends)
                    except NotFound:  # deleted meanwhile: create it
                        continue
                    except BaseException:
                        written = written or sends.first is not None
                        track.record(sends, present=False)
                        raise
                    written = written or sends.first is not None
                track.record(sends, present=token is not None)
                if token is not None:
                    if clock.monotonic() >= track.sent_at + OWN_DEADLINE * self.duration:
                        # Ours, but too late to be trusted (others may judge the
                        # record expired): clear it and campaign again.
                        await asyncio.shield(self._clear(token))
                        track = SendRecord()
                        continue
                    granted = True
                    return self._grant(owner, token, track.sent_at)
                if not blocking:
                    if not refreshed and self.hub.changes == seen:
                        # Decided on a cached object that wrote nothing, so no CAS
                        # could tell it was stale: read once and decide again.
                        refreshed = True
                        await self.hub.refresh()
                        continue
                    return None
                if not watching:
                    self.hub.retain_watch()
                    watching = True
                now = clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise AcquireTimeout(
                        f"lease {self.name!r}: not acquired within {timeout:g}s "
                        f"({self._describe(obj)})"
                    )
                wake = min(
                    (self.hub.tracker.expires_at(e) for e in _entries(obj)),
                    default=float("inf"),
                )
                if deadline is not None:
                    wake = min(wake, deadline)
                await self.hub.wait_change(seen, None if wake == float("inf") else wake)
        except BaseException:
            if written:
                # A grant write may have been applied although its response never
                # reached us: clear it, so a cancelled or timed-out acquire leaves
                # nothing behind. Shielded against a second cancellation.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._clear(None))
            raise
        finally:
            if watching:
                self.hub.release_watch()
            if not granted:
                self.slot.free(owner)

    def _grant(self, owner: _Owner, token: int, sent_at: float) -> Lease:
        identity, duration, name = self.rt.identity, self.duration, self.name

        def renew(spec: JSON, ids: set[str], wall: str) -> tuple[JSON | None, set[str]]:
            preferred = state.yields_to(spec, identity)
            if preferred is not None and state.holds(spec, identity, token):
                # Yield: stop renewing and lose the grant now; the Lease is released
                # by the loss path once the guarded work has stopped.
                observe.lost(entry, observe.PREFERRED_HOLDER)
                entry.mark_lost(
                    f"spec.preferredHolder of Lease {name!r} names {preferred!r}: "
                    "yielding leadership to it, as client-go's coordinated leader election does"
                )
                self.rt.renewer.remove(entry)  # no more renewals of a grant given up
                return None, set(ids)
            out = state.renew(spec, identity, token, duration, wall)
            return (out.spec, set()) if out.spec is not None else (None, set(ids))

        entry = Entry(
            self.hub,
            f"{identity}#{token}",
            float(duration),
            renew,
            sent_at=sent_at,
            drop=lambda deadline: self._clear(token, deadline),
        )
        # A lost grant no longer holds anything: let the next local task try.
        entry.on_lost.append(lambda _reason: self.slot.free(owner))
        self._held[entry] = (owner, token)
        self.rt.renewer.add(entry)
        return Lease(self, entry, token)

    async def _clear(self, token: int | None, deadline: float | None = None) -> None:
        """Release the record if this client (with ``token``, if given) still holds it."""

        def decide(obj: StoredObject) -> tuple[JSON | None, None]:
            return state.release(obj.spec, self.rt.identity, token, self._wall()).spec, None

        with contextlib.suppress(NotFound):
            await self.hub.update(decide, deadline=deadline)

    async def release(self, entry: Entry) -> None:
        """Stop renewing and clear ``holderIdentity`` so a waiting candidate takes over at once.

        Waits no longer than the grant's own deadline (or ``WRITE_FLOOR``).

        Raises:
            StoreUnavailable: the release could not be written; the lease then
                expires for others ``leaseDurationSeconds`` after its last renewal.
        """
        self.rt.renewer.remove(entry)
        held = self._held.pop(entry, None)
        if held is None:
            return
        owner, token = held
        # No longer than the grant's own deadline: past it others take over anyway.
        deadline = max(entry.deadline, self.rt.clock.monotonic() + WRITE_FLOOR)
        try:
            await self._clear(token, deadline)
        finally:
            self.slot.free(owner)


def _site(rt: Runtime, name: str, ttl: Duration) -> _LeaseSite:
    validate_name(name)
    return _LeaseSite(rt, name, state.duration_of(check.ttl(ttl)))


async def _obtain(site: _LeaseSite, timeout: float | None) -> Lease:
    lease = await site.acquire(timeout)
    assert lease is not None
    return lease


class LeaseMethods(HasRuntime):
    """The lease and leader-election methods of :class:`konductor.Client`."""

    def lease(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Guarded[Lease]:
        """``async with client.lease("scheduler", ttl=15) as lease:`` hold leadership.

        ``ttl`` is the Lease's ``leaseDurationSeconds``: at least 1 s, rounded
        up to whole seconds (Kubernetes stores an integer). It is renewed
        about every ttl/3. The Lease is created if missing.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: not acquired within ``timeout``; the Lease is unchanged.
            LeaseLost: (on exit) leadership was lost while the body ran; the body
                was cancelled.
        """
        site = _site(self._rt, name, ttl)
        wait = check.timeout(timeout)
        return Guarded(lambda: _obtain(site, wait))

    async def acquire_lease(
        self, name: str, *, ttl: Duration = DEFAULT_TTL, timeout: Duration | None = None
    ) -> Lease:
        """Wait for leadership and return the :class:`Lease`; call ``await lease.release()``.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: not acquired within ``timeout``; the Lease is unchanged.
        """
        site = _site(self._rt, name, ttl)
        return await _obtain(site, check.timeout(timeout))

    async def try_acquire_lease(self, name: str, *, ttl: Duration = DEFAULT_TTL) -> Lease | None:
        """The lease if nobody holds it (or its holder has expired), else ``None`` (no wait).

        A Lease whose holder this client has only just seen cannot have expired
        yet: expiry needs ``leaseDurationSeconds`` of observation.
        """
        return await _site(self._rt, name, ttl).acquire(0, blocking=False)

    async def campaign(
        self,
        name: str,
        leader_fn: Callable[[Lease], Awaitable[T]],
        *,
        ttl: Duration = DEFAULT_TTL,
    ) -> T:
        """Keep trying to lead; run ``await leader_fn(lease)`` while this client leads.

        When leadership is lost, ``leader_fn`` is cancelled (and awaited) and
        the campaign starts again. It runs until cancelled (which cancels
        ``leader_fn`` and releases the lease), or until ``leader_fn`` returns
        or raises: the lease is released and its result returned (or its
        exception raised). Store outages while campaigning are retried with
        backoff.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            whatever ``leader_fn`` raises.
        """
        _check_leader_fn(leader_fn)
        site = _site(self._rt, name, ttl)
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            try:
                lease = await _obtain(site, None)
            except StoreUnavailable as exc:
                log.warning("campaign for lease %r: %s; retrying", name, exc)
                await self._rt.clock.sleep(backoff.next_delay())
                continue
            backoff.reset()
            finished = await _lead(lease, leader_fn)
            if finished is not None:
                return finished.result()
            log.warning(
                "lost leadership of lease %r (token %d): %s; campaigning again",
                name,
                lease.token,
                lease.lost_reason,
            )


def _check_leader_fn(leader_fn: Callable[[Lease], Awaitable[T]]) -> None:
    """Refuse, before anything is written, a ``leader_fn`` that cannot be awaited with a Lease.

    Raises:
        InvalidArgument: not an ``async def`` function (or an object whose
            ``__call__`` is one), or it cannot be called with one argument.
    """
    if not callable(leader_fn):
        raise InvalidArgument(
            f"leader_fn must be an async function taking the Lease, got {leader_fn!r}",
            argument="leader_fn",
        )
    call = getattr(leader_fn, "__call__", None)  # noqa: B004 - an async __call__ counts
    if not (inspect.iscoroutinefunction(leader_fn) or inspect.iscoroutinefunction(call)):
        raise InvalidArgument(
            f"leader_fn must be an async function (async def leader_fn(lease): ...), got the "
            f"sync callable {leader_fn!r}; wrap sync work in an async function "
            "(e.g. with asyncio.to_thread)",
            argument="leader_fn",
        )
    try:
        signature = inspect.signature(leader_fn)
    except (TypeError, ValueError):  # no signature to check (some builtins)
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        raise InvalidArgument(
            f"leader_fn must accept exactly one argument, the Lease; {leader_fn!r} "
            f"takes {signature}: {exc}",
            argument="leader_fn",
        ) from exc


async def _lead(lease: Lease, leader_fn: Callable[[Lease], Awaitable[T]]) -> asyncio.Task[T] | None:
    """Run ``leader_fn`` until it ends (its finished task) or leadership is lost (``None``)."""

    if lease.is_lost:  # lost before it could start: do not start leading
        await _release_quietly(lease)
        return None

    async def run() -> T:
        return await leader_fn(lease)

    task: asyncio.Task[T] = asyncio.ensure_future(run())
    lost = asyncio.ensure_future(lease.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task
        task.cancel(f"konductor: leadership of lease {lease.name!r} lost")
        await asyncio.wait({task})
        return None
    finally:
        lost.cancel()
        if not task.done():  # we were cancelled: stop leading before giving the lease up
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wait({task}))
        await _release_quietly(lease)


async def _release_quietly(lease: Lease) -> None:
    try:
        await asyncio.shield(lease.release())
    except Exception as exc:
        log.warning(
            "could not release lease %r (it expires after %ss): %s", lease.name, lease.ttl, exc
        )
