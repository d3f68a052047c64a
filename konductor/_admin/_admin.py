"""The admin API: status, describe, watch, force-release, delete and repair of any object.

What operators and tools need beside the primitives themselves: who holds,
who waits and where in the queue, when entries expire on this observer's
clock, what the object last did, and the operator's actions on a stuck or
broken object. Reading goes through :mod:`._read` (the primitives' own
parsers); every status write goes through the object's :class:`Hub`, the
same compare-and-swap loop the primitives use, with decisions made by the
primitives' own pure transitions (``release``) or :mod:`._repair`. The CLI
is a presentation of this API; so is the observability work.

Reached as :attr:`konductor.Client.admin` (and :attr:`konductor.SyncClient.admin`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from konductor._backoff import Backoff
from konductor._engine import _queue_state as queue_state
from konductor._engine._clock import micro_time
from konductor._engine._expiry import ExpiryTracker
from konductor._engine._hub import Hub
from konductor._engine._parse import Where
from konductor._engine._runtime import Runtime
from konductor._engine._waiting import update_fresh
from konductor._errors import (
    AlreadyExists,
    Conflict,
    CRDNotInstalled,
    Forbidden,
    InvalidArgument,
    KonductorError,
    NotFound,
)
from konductor._names import validate_name
from konductor._primitives import _gate_state as gate_state
from konductor._primitives import _lease_state as lease_state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import (
    BARRIER,
    CUSTOM_KINDS,
    GATE,
    JOB,
    LEASE,
    ONCE,
    PRIMITIVE_KINDS,
    SEMAPHORE,
    Kind,
)

from ._model import EntryStatus, NamespaceStatus, ObjectStatus, RepairReport
from ._read import ENTRIES, QUEUE_KINDS, Observer, read
from ._repair import plan

if TYPE_CHECKING:
    from konductor._client import Client

log = logging.getLogger("konductor")

#: The kinds ``status`` lists, in this order.
STATUS_KINDS: tuple[Kind, ...] = (*CUSTOM_KINDS, LEASE)
_CONDITION_KINDS = {"Barrier": BARRIER, "Once": ONCE, "Job": JOB}


def kind_of(kind: str) -> Kind:
    """The :class:`Kind` of a primitive named as users name it (``"semaphore"``).

    Raises:
        InvalidArgument: ``kind`` is not one of konductor's primitives.
    """
    found = PRIMITIVE_KINDS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise InvalidArgument(
            f"kind={kind!r} is not a konductor primitive; use one of: " + ", ".join(PRIMITIVE_KINDS)
        )
    return found


class Admin:
    """Inspect and administer any object in the client's namespace.

    Get one with ``client.admin``. Reads cost one API call per object
    (``status`` one list per kind); ``watch`` and ``watch_status`` hold
    watches while iterated. Holder and waiter times come from the writers'
    clocks and are informational; ``expires_in`` is judged on this client's
    own monotonic clock, like every expiry decision konductor makes.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def _rt(self) -> Runtime:
        return self._client._rt

    def _observer(self, tracker: ExpiryTracker | None) -> Observer:
        clock = self._rt.clock
        return Observer(self._client.namespace, clock.monotonic, clock.wall, tracker)

    def _hub(self, kind: Kind, name: str) -> Hub:
        return self._rt.hub(kind, name, ENTRIES[kind])

    def _missing(self, kind: Kind, name: str) -> NotFound:
        return NotFound(f"{kind} {name!r} not found in namespace {self._client.namespace!r}")

    # -- reading ------------------------------------------------------------------------

    async def describe(self, kind: str, name: str) -> ObjectStatus:
        """One object's full story: holders, waiters with queue position, tokens, transitions.

        An object whose stored state does not parse is described, not
        refused: ``problem`` says what is wrong (see :meth:`repair`).

        Raises:
            InvalidArgument / InvalidName: bad ``kind`` or ``name``, before any API call.
            NotFound: there is no such object.
        """
        found = kind_of(kind)
        hub = self._hub(found, validate_name(name))
        obj = await hub.refresh()
        if obj is None:
            raise self._missing(found, name)
        return await self._read(obj, hub.tracker, {})

    async def status(
        self, kinds: Iterable[str] | None = None, *, strict: bool = False
    ) -> NamespaceStatus:
        """Every konductor object and Lease of the namespace (or of ``kinds`` only).

        A kind the store refuses to list (``Forbidden``, a CRD not installed)
        is left out and named in ``errors``: the rest is still shown; with
        ``strict`` the refusal is raised instead.

        Raises:
            InvalidArgument: a name in ``kinds`` is not a primitive.
            Forbidden, CRDNotInstalled: ``strict`` and a kind could not be listed.
        """
        chosen = STATUS_KINDS if kinds is None else tuple(kind_of(k) for k in kinds)
        objects: dict[tuple[Kind, str], StoredObject] = {}
        errors: dict[str, str] = {}
        for kind in chosen:
            try:
                listed = await self._rt.store.list(kind)
            except (Forbidden, CRDNotInstalled) as exc:
                if strict:
                    raise
                errors[kind.plural] = str(exc)
                continue
            for obj in listed.items:
                objects[(kind, obj.name)] = obj
        return await self._snapshot(objects, {}, errors)

    async def _snapshot(
        self,
        objects: Mapping[tuple[Kind, str], StoredObject],
        trackers: Mapping[tuple[Kind, str], ExpiryTracker],
        errors: Mapping[str, str],
    ) -> NamespaceStatus:
        known = {key: obj.status for key, obj in objects.items()}
        out = [
            await self._read(obj, trackers.get(key), known)
            for key, obj in sorted(objects.items(), key=_order)
        ]
        return NamespaceStatus(self._client.namespace, tuple(out), dict(errors))

    async def _read(
        self,
        obj: StoredObject,
        tracker: ExpiryTracker | None,
        known: Mapping[tuple[Kind, str], Mapping[str, Any]],
    ) -> ObjectStatus:
        status = read(obj, self._observer(tracker))
        if obj.kind != GATE or status.corrupt:
            return status
        conds = gate_state.conditions_of(obj.spec)
        if not conds:
            return status
        met = []
        for cond in conds:
            key = (_CONDITION_KINDS[cond.type], cond.name)
            if key in known:
                target: Mapping[str, Any] | None = known[key]
            else:
                try:
                    target = (await self._rt.store.get(*key)).status
                except NotFound:
                    target = None
                except KonductorError:  # unknown: shown as pending, never guessed met
                    target = None
            met.append((cond, gate_state.condition_met(cond, target)))
        if obj.status.get("open") is True:
            summary = "open"
        elif all(m for _, m in met):
            summary = "open (all conditions met)"
        else:
            summary = (
                "closed (waiting for "
                + ", ".join(f"{c.type}/{c.name}" for c, m in met if not m)
                + ")"
            )
        return replace(status, summary=summary)

    # -- watching -----------------------------------------------------------------------

    async def watch(self, kind: str, name: str) -> AsyncIterator[ObjectStatus | None]:
        """Yield the object's status now and after every change (``None``: it does not exist).

        Driven by the object's watch, shared with every waiter of this client;
        also yields when an entry's ``expires_in`` runs out, so a countdown
        shown from it is never left stale. Runs until the caller stops iterating.

        Raises:
            InvalidArgument / InvalidName: bad ``kind`` or ``name``.
            KonductorError: the watch ended for good (``Forbidden``, ...).
        """
        found = kind_of(kind)
        hub = self._hub(found, validate_name(name))
        hub.retain_watch()
        try:
            await hub.current()
            while True:
                seen = hub.changes
                obj = hub.obj
                if obj is None:
                    yield None
                    await hub.wait_change(seen, None)
                    continue
                current = await self._read(obj, hub.tracker, {})
                yield current
                await hub.wait_change(seen, self._next_expiry([current]))
        finally:
            hub.release_watch()

    def _next_expiry(self, objects: Iterable[ObjectStatus]) -> float | None:
        left = [
            e.expires_in
            for o in objects
            for e in o.entries
            if e.expires_in is not None and e.expires_in > 0
        ]
        return self._rt.clock.monotonic() + min(left) if left else None

    async def watch_status(self) -> AsyncIterator[NamespaceStatus]:
        """Yield :meth:`status` now and after every change to any object in the namespace.

        One list and one watch per kind (not per object), held while iterated;
        a watch that fails for now is reopened with backoff, one the store
        refuses (``Forbidden``) is named in ``errors``. Also yields when an
        entry's ``expires_in`` runs out.
        """
        store = self._rt.store
        objects: dict[tuple[Kind, str], StoredObject] = {}
        trackers: dict[tuple[Kind, str], ExpiryTracker] = {}
        errors: dict[str, str] = {}
        listed: set[Kind] = set()
        changed = asyncio.Event()
        clock = self._rt.clock

        def observe(obj: StoredObject, deleted: bool) -> None:
            key = (obj.kind, obj.name)
            if deleted:
                objects.pop(key, None)
                trackers.pop(key, None)
            else:
                objects[key] = obj
                tracker = trackers.setdefault(key, ExpiryTracker())
                tracker.observe(ENTRIES[obj.kind](obj), clock.monotonic())
            changed.set()

        async def follow(kind: Kind) -> None:
            backoff = Backoff(initial=0.1, cap=5.0)
            while True:
                try:
                    page = await store.list(kind)
                    names = {o.name for o in page.items}
                    for key in [k for k in objects if k[0] == kind and k[1] not in names]:
                        observe(objects[key], deleted=True)
                    for obj in page.items:
                        observe(obj, deleted=False)
                    listed.add(kind)
                    errors.pop(kind.plural, None)
                    changed.set()
                    async with store.watch(kind, since=page.version, seen=page.items) as events:
                        async for ev in events:
                            backoff.reset()
                            observe(ev.object, ev.type == "DELETED")
                except asyncio.CancelledError:
                    raise
                except (Forbidden, CRDNotInstalled) as exc:
                    errors[kind.plural] = str(exc)
                    listed.add(kind)
                    changed.set()
                    return
                except KonductorError as exc:
                    log.warning("watch of %s failed: %s; reopening it", kind.plural, exc)
                await asyncio.sleep(backoff.next_delay())

        tasks = [asyncio.ensure_future(follow(kind)) for kind in STATUS_KINDS]
        try:
            while len(listed) < len(STATUS_KINDS):  # the first snapshot is complete
                changed.clear()
                await changed.wait()
            while True:
                changed.clear()
                snapshot = await self._snapshot(objects, trackers, errors)
                yield snapshot
                await clock.wait(changed, self._next_expiry(snapshot.objects))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- writing ------------------------------------------------------------------------

    async def force_release(
        self,
        kind: str,
        name: str,
        *,
        holder: str | None = None,
        id: str | None = None,
        everyone: bool = False,
    ) -> tuple[EntryStatus, ...]:
        """Remove holders or waiters of a semaphore, mutex, rwmutex or Lease; return them.

        Choose them by ``holder`` identity, by entry ``id`` or ``everyone``.
        The next waiters are granted in the same write (the primitives' own
        ``release`` transition); a Lease is released as client-go's
        ReleaseOnCancel does. A removed holder learns at its next renewal
        (within ttl/3) and treats its grant as lost. Meant for a holder that
        is stuck; a dead one expires after its TTL by itself. Returns the
        removed entries: empty when none matched (nothing is written).

        Raises:
            InvalidArgument: not exactly one of ``holder``, ``id``, ``everyone``;
                or a kind that has no holders.
            NotFound: no such object (for a Lease: also when ``holder`` does not hold it).
            CorruptState: the object's state does not parse (see :meth:`repair`).
        """
        found = kind_of(kind)
        validate_name(name)
        if sum((holder is not None, id is not None, everyone)) != 1:
            raise InvalidArgument(
                "force_release: pass exactly one of holder=IDENTITY, id=ID or everyone=True"
            )
        if found == LEASE:
            return await self._release_lease(name, holder)
        policy = QUEUE_KINDS.get(found)
        if policy is None:
            raise InvalidArgument(
                f"kind={kind!r} has no holders to release; only semaphore, mutex, rwmutex and "
                "lease do"
            )
        where = Where(found, name, self._client.namespace)
        hub = self._hub(found, name)

        def decide(obj: StoredObject) -> tuple[JSON | None, tuple[EntryStatus, ...]]:
            current = read(obj, self._observer(hub.tracker))
            chosen = tuple(
                e
                for e in current.entries
                if everyone or (holder is not None and e.identity == holder) or e.id == id
            )
            ids = {str(e.id) for e in chosen}
            out = queue_state.release(obj.status, obj.spec, ids, (), policy, where=where)
            return out.status, chosen

        try:
            chosen, _ = await update_fresh(hub, decide)
        except NotFound:
            raise self._missing(found, name) from None
        return chosen

    async def _release_lease(self, name: str, holder: str | None) -> tuple[EntryStatus, ...]:
        hub = self._hub(LEASE, name)
        wall = micro_time(self._rt.clock.wall())

        def decide(obj: StoredObject) -> tuple[JSON | None, tuple[EntryStatus, ...]]:
            current = read(obj, self._observer(hub.tracker))
            if not current.holders:
                if holder is not None:
                    raise NotFound(f"lease {name!r} is not held (by {holder} or anyone)")
                return None, ()
            held = current.holders[0]
            if holder is not None and held.identity != holder:
                raise NotFound(f"lease {name!r} is held by {held.identity}, not by {holder}")
            out = lease_state.release(obj.spec, str(held.identity), None, wall)
            return out.spec, current.holders

        try:
            chosen, _ = await update_fresh(hub, decide)
        except NotFound as exc:
            if hub.obj is None:
                raise self._missing(LEASE, name) from None
            raise exc from None
        return chosen

    async def delete(self, kind: str, name: str, *, force: bool = True) -> ObjectStatus:
        """Delete the object, whatever its state unless ``force=False``; return what it was.

        With ``force=False`` an object that has holders or waiters is left
        alone (decided on the version deleted: the delete is conditional on
        it). Whoever still holds or waits loses its grant at its next renewal.

        Raises:
            InvalidArgument / InvalidName: bad ``kind`` or ``name``.
            NotFound: there is no such object.
            Conflict: ``force=False`` and the object has holders or waiters.
            Forbidden: the store refused the delete (RBAC).
        """
        found = kind_of(kind)
        validate_name(name)
        store = self._rt.store
        while True:
            try:
                obj = await store.get(found, name)
            except NotFound:
                raise self._missing(found, name) from None
            before = await self._read(obj, None, {})
            if not force and before.entries:
                raise Conflict(
                    f"{kind} {name!r} has {len(before.holders)} holder(s) and "
                    f"{len(before.waiters)} waiter(s); delete it anyway with force=True "
                    "(they lose their grants)"
                )
            try:
                await store.delete(found, name, version=None if force else obj.version)
            except Conflict:
                continue  # changed since read: decide again on what it holds now
            except NotFound:
                raise self._missing(found, name) from None
            return before

    async def repair(self, kind: str, name: str, *, next_token: int | None = None) -> RepairReport:
        """Fix an object whose stored state does not parse, keeping everything that does.

        Entries that do not parse are removed (their owners learn at their
        next renewal that their grant is gone); everything that parses stays.
        Written through the object's compare-and-swap loop. Nothing is written
        when the state parses (``RepairReport.changed`` is false). ``next_token`` is
        needed only when a queue's ``nextToken`` itself is unreadable.

        Raises:
            InvalidArgument / InvalidName: bad ``kind``/``name``; or ``nextToken``
                is unreadable and ``next_token`` was not given.
            NotFound: there is no such object.
            CorruptState: what is broken cannot be repaired without guessing
                (a spec; a Once's state; a wait group's count): the message
                says how to fix it by hand, or delete the object.
        """
        found = kind_of(kind)
        hub = self._hub(found, validate_name(name))
        where = Where(found, name, self._client.namespace)
        obj = await hub.refresh()
        if obj is None:
            raise self._missing(found, name)
        before = await self._read(obj, hub.tracker, {})

        def decide(obj: StoredObject) -> tuple[JSON | None, Any]:
            chosen = plan(obj, where, next_token)
            return chosen.status, chosen

        try:
            done, written = await update_fresh(hub, decide)
        except NotFound:
            raise self._missing(found, name) from None
        after = await self._read(written, hub.tracker, {})
        return RepairReport(before, after, done.fixed, done.dropped)

    async def create_semaphore(
        self, name: str, permits: int, *, update: bool = False
    ) -> tuple[str, ObjectStatus]:
        """Create semaphore ``name`` with ``permits``; with ``update``, change an existing count.

        Returns ``("created" | "unchanged" | "updated", status)``. Holders keep
        their permits when the count changes. The permit count is the spec
        (a person's setting), written by a spec compare-and-swap.

        Raises:
            InvalidArgument / InvalidName: bad ``name`` or ``permits``.
            AlreadyExists: it exists with another count and ``update`` is false.
        """
        from konductor._engine import _validate as check

        validate_name(name)
        permits = check.positive_int(permits, "permits")
        store = self._rt.store
        try:
            obj = await store.create(SEMAPHORE, name, {"permits": permits})
            return "created", await self._read(obj, None, {})
        except AlreadyExists:
            pass
        while True:
            obj = await store.get(SEMAPHORE, name)
            current = obj.spec.get("permits")
            if current == permits:
                return "unchanged", await self._read(obj, None, {})
            if not update:
                raise AlreadyExists(
                    f"semaphore {name!r} already exists with permits={current}; pass "
                    f"update=True to change it to {permits} (holders keep their permits)"
                )
            try:
                obj = await store.replace_spec(
                    SEMAPHORE, name, {**obj.spec, "permits": permits}, version=obj.version
                )
            except Conflict:
                continue
            return "updated", await self._read(obj, None, {})


def _order(item: tuple[tuple[Kind, str], StoredObject]) -> tuple[int, str]:
    (kind, name), _ = item
    return STATUS_KINDS.index(kind) if kind in STATUS_KINDS else len(STATUS_KINDS), name
