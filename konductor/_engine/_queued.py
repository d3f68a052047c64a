"""The engine of queued grants: semaphore, mutex and read-write mutex.

Every decision is a pure transition from :mod:`._queue_state`, written through
the object's :class:`Hub` as a guarded JSON Patch that tests exactly what the
decision read (:func:`._queue_state.patch_ops`), or by compare-and-swap where
no such patch can say it. This module adds the
waiting (watch-driven, waking at the earliest moment a blocking entry could
expire on this observer's clock), the renewal of queue tickets and grants, and
the clean-up that makes a cancelled or timed-out acquire leave no ticket and
no grant behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._engine import _queue_state as state
from konductor._engine._clock import micro_time
from konductor._engine._grant import Grant
from konductor._engine._hub import WRITE_FLOOR, Hub, NewState, Patch, Sends
from konductor._engine._parse import Where
from konductor._engine._renewal import NEVER, Entry
from konductor._engine._runtime import Runtime
from konductor._errors import (
    AcquireTimeout,
    AlreadyExists,
    CorruptState,
    NotFound,
    StoreUnavailable,
)
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import Kind

ENTRIES = state.tracked_entries  # parsed entries only: a corrupt one is never tracked
G = TypeVar("G", bound=Grant)
log = logging.getLogger("konductor")


def as_new_state(out: state.Outcome) -> NewState:
    """What the hub writes for ``out``: its guarded patch where it has one, else its status."""
    if out.status is None:
        return None
    if out.ops is not None:
        return Patch(out.ops, out.status)
    return out.status


class _Again:
    """An attempt that was withdrawn: the acquisition starts again with a new ticket."""


class Queued(Generic[G]):
    """One acquisition site: a (kind, name) with a policy, a request shape and a grant type.

    ``create_spec`` is the spec to create the object with when it is missing
    (``None``: a missing object is an error, ``missing_hint`` says how to fix
    it); ``check(obj)`` validates the request against the cluster's spec.
    ``extra`` is recorded as is on the ticket and the grant (see
    :attr:`._queue_state.Request.extra`).
    """

    def __init__(
        self,
        rt: Runtime,
        kind: Kind,
        name: str,
        policy: state.Policy,
        make_grant: Callable[[Queued[G], Entry, JSON], G],
        *,
        count: int,
        ttl: float,
        mode: str = state.EXCLUSIVE,
        create_spec: JSON | None = None,
        missing_hint: str = "",
        check: Callable[[StoredObject], None] | None = None,
        noun: str = "",
        priority: int = 0,
        extra: JSON | None = None,
    ) -> None:
        self.rt = rt
        self.kind = kind
        self.name = name
        self.policy = policy
        self.make_grant = make_grant
        self.count = count
        self.ttl = ttl
        self.mode = mode
        self.create_spec = create_spec
        self.missing_hint = missing_hint
        self.check = check
        self.noun = noun or kind.kind.lower()
        self.priority = priority
        self.extra: JSON = dict(extra or {})
        self.hub: Hub = rt.hub(
            kind, name, ENTRIES, lambda obj: as_new_state(state.settle(obj.status, policy))
        )
        self.where = Where(kind, name, rt.store.namespace)

    async def ensure(self) -> StoredObject:
        """The object, created with ``create_spec`` if it does not exist."""
        obj = await self.hub.current()
        while obj is None:
            if self.create_spec is None:
                raise NotFound(
                    f"{self.noun} {self.name!r} does not exist in namespace "
                    f"{self.rt.store.namespace!r}; {self.missing_hint}"
                )
            try:
                obj = await self.rt.store.create(self.kind, self.name, self.create_spec)
                self.hub.observe(obj)
            except AlreadyExists:
                obj = await self.hub.refresh()
        if self.check is not None:
            try:
                self.check(obj)
            except CorruptState:
                # The cached copy may predate a repair (with no watch open to bring
                # the repair in): decide on a fresh read before refusing.
                fresh = await self.hub.refresh()
                if fresh is None:
                    return await self.ensure()
                self.check(fresh)
                obj = fresh
        return obj

    def _decide(
        self, req: state.Request, enqueue: bool
    ) -> Callable[[StoredObject], tuple[NewState, JSON | None]]:
        def decide(obj: StoredObject) -> tuple[NewState, JSON | None]:
            stale = self.hub.stale(obj)
            stale.discard(req.id)
            observe.reclaimed(req.id, stale, obj.status)
            wall = micro_time(self.rt.clock.wall())
            out = state.acquire(
                obj.status,
                obj.spec,
                req,
                stale,
                wall,
                self.policy,
                enqueue=enqueue,
                where=self.where,
            )
            return as_new_state(out), out.granted

        return decide

    def _entry(self, req_id: str) -> Entry:
        def renew(status: JSON, ids: set[str], wall: str) -> tuple[NewState, set[str]]:
            outcome, missing = state.renew(status, ids, wall, self.policy, where=self.where)
            return as_new_state(outcome), missing

        return Entry(
            self.hub,
            req_id,
            self.ttl,
            renew,
            sent_at=NEVER,  # until a write of it is confirmed
            drop=lambda deadline: self._remove(req_id, deadline),
        )

    def _describe(self, obj: StoredObject) -> str:
        summary = self.policy.summary(
            list(obj.status.get("holders") or []), list(obj.status.get("queue") or [])
        )
        return ", ".join(f"{k}={v}" for k, v in summary.items())

    @observe.acquisition
    async def acquire(self, timeout: float | None, *, blocking: bool = True) -> G | None:
        """Wait (watch-driven) for the grant; ``None`` for a failed non-blocking try.

        A waiter rides out a store that is unreachable for a while (it keeps
        trying, with backoff, within ``timeout``). A request whose ticket or
        grant could not be kept alive (its own deadline passed, as when the
        store was unreachable) is never handed to the caller: it is withdrawn
        and the request starts again with a new ticket.

        Raises:
            AcquireTimeout: not granted within ``timeout``; nothing is left behind.
            NotFound: the object is missing and cannot be created.
            StoreUnavailable: a non-blocking try could not reach the store.
        """
        await self.ensure()
        clock = self.rt.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        while True:
            outcome = await self._attempt(timeout, deadline, blocking)
            if not isinstance(outcome, _Again):
                return outcome

    def _timed_out(self, timeout: float | None, obj: StoredObject | None) -> AcquireTimeout:
        why = f"({self._describe(obj)})" if obj is not None else "(the store was unreachable)"
        return AcquireTimeout(f"{self.noun} {self.name!r}: not granted within {timeout:g}s {why}")

    async def _attempt(
        self, timeout: float | None, deadline: float | None, blocking: bool
    ) -> G | _Again | None:
        clock = self.rt.clock
        req = state.Request(
            uuid.uuid4().hex,
            self.rt.identity,
            self.count,
            self.ttl,
            self.mode,
            self.priority,
            self.extra,
        )
        entry = self._entry(req.id)
        backoff = Backoff(initial=0.1, cap=2.0)
        registered = watching = refreshed = False
        obj: StoredObject | None = self.hub.obj
        try:
            while True:
                seen = self.hub.changes
                sends = Sends()
                # A write never outlives the caller's deadline by more than WRITE_FLOOR.
                write_by = (
                    None if deadline is None else max(deadline, clock.monotonic() + WRITE_FLOOR)
                )
                try:
                    grant, obj = await self.hub.update(
                        self._decide(req, blocking), sends=sends, deadline=write_by
                    )
                except StoreUnavailable as exc:
                    entry.record(sends, present=False)
                    if not blocking:
                        raise
                    now = clock.monotonic()
                    if deadline is not None and now >= deadline:
                        raise self._timed_out(timeout, None) from exc
                    delay = backoff.next_delay()
                    log.warning(
                        "%s %r: the store is unreachable (%s); trying again in %.2fs",
                        self.noun,
                        self.name,
                        exc,
                        delay,
                    )
                    await clock.sleep(delay if deadline is None else min(delay, deadline - now))
                    continue
                backoff.reset()
                entry.record(sends, present=any(e.get("id") == req.id for e in ENTRIES(obj)))
                if grant is not None:
                    if entry.lost_reason is not None or clock.monotonic() >= entry.deadline:
                        # Granted, but too late to be trusted: others may already
                        # judge the entry expired. Withdraw it and start again.
                        log.info(
                            "%s %r: a grant arrived after its holder's own deadline; "
                            "withdrawing it and queueing again",
                            self.noun,
                            self.name,
                        )
                        await self._withdraw(entry, req.id)
                        return _Again()
                    if not registered:
                        self.rt.renewer.add(entry)
                    # Holders watch too: their cache stays current, so the
                    # release that hands the grant on rarely loses its CAS.
                    self.hub.retain_watch()
                    return self.make_grant(self, entry, grant)
                if not blocking:
                    if not refreshed and self.hub.changes == seen:
                        # Decided on a cached object that wrote nothing, so no CAS
                        # could tell it was stale: read once and decide again.
                        refreshed = True
                        await self.hub.refresh()
                        continue
                    return None
                if entry.lost_reason is not None:
                    # Our ticket was not renewed in time (the store was out of
                    # reach): others may judge it expired. Queue again afresh.
                    await self._withdraw(entry, req.id)
                    return _Again()
                if not registered:  # our queue ticket is renewed while we wait
                    self.rt.renewer.add(entry)
                    registered = True
                    observe.queued(obj.status, req.id)
                if not watching:
                    self.hub.retain_watch()
                    watching = True
                now = clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise self._timed_out(timeout, obj)
                wake = min(
                    (
                        self.hub.tracker.expires_at(e)
                        for e in state.blocking_entries(obj.status, req.id, where=self.where)
                    ),
                    default=float("inf"),
                )
                if deadline is not None:
                    wake = min(wake, deadline)
                wake = min(wake, entry.deadline)  # a lost ticket is replaced at once
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

    async def _withdraw(self, entry: Entry, req_id: str) -> None:
        """Stop renewing ``req_id`` and remove it from the store (best effort, shielded)."""
        self.rt.renewer.remove(entry)
        try:
            await asyncio.shield(self._remove(req_id))
        except StoreUnavailable as exc:
            log.info("could not withdraw %s (it expires after its TTL): %s", req_id, exc)

    async def _remove(self, req_id: str, deadline: float | None = None) -> None:
        def decide(obj: StoredObject) -> tuple[NewState, None]:
            stale = self.hub.stale(obj)
            out = state.release(
                obj.status, obj.spec, {req_id}, stale, self.policy, where=self.where
            )
            return as_new_state(out), None

        with contextlib.suppress(NotFound):
            await self.hub.update(decide, deadline=deadline)

    async def release(self, entry: Entry) -> None:
        """Remove the grant; waits no longer than the grant's own deadline (or WRITE_FLOOR).

        Past that deadline others reclaim the entry anyway, after its TTL.
        """
        self.rt.renewer.remove(entry)
        deadline = max(entry.deadline, self.rt.clock.monotonic() + WRITE_FLOOR)
        try:
            await self._remove(entry.id, deadline)
        finally:
            self.hub.release_watch()
