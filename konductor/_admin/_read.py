"""Reading any stored object into an :class:`ObjectStatus`, through the primitives' parsers.

The one place outside the primitives that knows how each kind stores its
state; it knows it only by calling the ``_*_state`` modules. A field that
does not parse is reported (``ObjectStatus.problem``, the primitives' own
:class:`~konductor.CorruptState` message), never guessed at and never an
exception: describing a broken object is how one finds out what to repair.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from konductor._engine import _queue_state as queue_state
from konductor._engine._expiry import ExpiryTracker
from konductor._engine._hub import Entries, entries_of
from konductor._engine._parse import Where
from konductor._errors import CorruptState
from konductor._primitives import _barrier_state as barrier_state
from konductor._primitives import _gate_state as gate_state
from konductor._primitives import _lease_state as lease_state
from konductor._primitives import _once_state as once_state
from konductor._primitives import _ratelimit_state as ratelimit_state
from konductor._primitives import _waitgroup_state as waitgroup_state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import (
    BARRIER,
    GATE,
    LEASE,
    MUTEX,
    ONCE,
    PRIMITIVE_KINDS,
    RATELIMIT,
    RWMUTEX,
    SEMAPHORE,
    WAITGROUP,
    Kind,
)

from ._model import HOLDER, RUNNER, WAITER, EntryStatus, ObjectStatus, Transition

QUEUE_KINDS: Mapping[Kind, queue_state.Policy] = {
    SEMAPHORE: queue_state.SEMAPHORE,
    MUTEX: queue_state.MUTEX,
    RWMUTEX: queue_state.RWMUTEX,
}
PRIMITIVE_OF: Mapping[Kind, str] = {kind: name for name, kind in PRIMITIVE_KINDS.items()}


def _lease_entries(obj: StoredObject) -> list[JSON]:
    return lease_state.holder_entries(obj.spec)


def _run_entries(obj: StoredObject) -> list[JSON]:
    run = once_state.run_of(obj.status)
    return [run] if run is not None else []


#: The entries whose expiry observers of each kind track: the same ones the
#: primitive's own hub tracks, so a hub the admin API creates first serves
#: the primitive unchanged (a client keeps one hub per object).
ENTRIES: Mapping[Kind, Entries] = {
    SEMAPHORE: queue_state.tracked_entries,
    MUTEX: queue_state.tracked_entries,
    RWMUTEX: queue_state.tracked_entries,
    LEASE: _lease_entries,
    ONCE: _run_entries,
    BARRIER: entries_of(),
    GATE: entries_of(),
    WAITGROUP: entries_of(),
    RATELIMIT: ratelimit_state.tracked_entries,
}


class Observer:
    """How an object is read: its namespace, this observer's clocks and expiry tracker.

    ``tracker`` is the hub's (or a watch's) record of when each entry was
    first seen unchanged; ``None`` reads as "just seen" (a one-shot read).
    """

    def __init__(
        self,
        namespace: str,
        monotonic: Callable[[], float],
        wall: Callable[[], dt.datetime],
        tracker: ExpiryTracker | None = None,
    ) -> None:
        self.namespace = namespace
        self.now = monotonic()
        self.wall = wall()
        self.tracker = tracker

    def ago(self, at: str | None) -> float | None:
        when = _parse_time(at)
        return None if when is None else (self.wall - when).total_seconds()

    def expires_in(self, tracked: Mapping[str, Any] | None, ttl: float | None) -> float | None:
        if tracked is None or ttl is None:
            return None
        if self.tracker is None:
            return ttl
        at = self.tracker.expires_at(tracked)
        return ttl if at == float("inf") else max(0.0, at - self.now)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read(obj: StoredObject, observer: Observer) -> ObjectStatus:
    """The :class:`ObjectStatus` of ``obj`` (any kind konductor keeps, and any Lease)."""
    where = Where(obj.kind, obj.name, observer.namespace)
    if obj.kind in QUEUE_KINDS:
        fields = _queued(obj, where, observer)
    elif obj.kind == LEASE:
        fields = _lease(obj, observer)
    elif obj.kind == ONCE:
        fields = _once(obj, where, observer)
    elif obj.kind == BARRIER:
        fields = _barrier(obj, where)
    elif obj.kind == GATE:
        fields = _gate(obj, where)
    elif obj.kind == WAITGROUP:
        fields = _waitgroup(obj, where)
    elif obj.kind == RATELIMIT:
        fields = _ratelimit(obj, where, observer)
    else:
        fields = {"summary": "-"}
    if fields.get("problem") is not None:
        fields["summary"] = "corrupt: " + fields["summary"]
    transitions = tuple(replace(t, ago=observer.ago(t.at)) for t in fields.pop("transitions", ()))
    return ObjectStatus(
        transitions=transitions,
        primitive=PRIMITIVE_OF.get(obj.kind, obj.kind.kind.lower()),
        kind=obj.kind.kind,
        name=obj.name,
        namespace=observer.namespace,
        version=obj.version,
        spec=obj.spec,
        status=obj.status,
        **fields,
    )


def _recorded(status: Mapping[str, Any], by: str, **times: str) -> list[Transition]:
    """The transitions a status records as ``what=timestampField``, each by ``status[by]``."""
    who = _text(status.get(by))
    return [
        Transition(what, _text(status.get(key)), who)
        for what, key in times.items()
        if _text(status.get(key))
    ]


def _problem(check: Callable[[], object]) -> str | None:
    try:
        check()
    except CorruptState as exc:
        return str(exc)
    return None


# -- semaphore, mutex, read-write mutex -----------------------------------------------


def _raw_list(status: Mapping[str, Any], key: str) -> list[Any]:
    value = status.get(key)
    return list(value) if isinstance(value, list) else []


def _parsed(status: Mapping[str, Any], key: str) -> list[queue_state.Slot]:
    slots = (queue_state.parse_slot(e, holder=key == "holders") for e in _raw_list(status, key))
    return [s for s in slots if s is not None]


def _slot_entry(
    slot: queue_state.Slot, role: str, position: int | None, observer: Observer, rw: bool
) -> EntryStatus:
    return EntryStatus(
        role=role,
        identity=slot.holder,
        id=slot.id,
        token=slot.token,
        count=slot.count,
        mode=slot.mode if rw else None,
        position=position,
        ttl=slot.ttl,
        renewals=slot.renewals,
        renewed_at=slot.renewed_at,
        renewed_ago=observer.ago(slot.renewed_at),
        expires_in=observer.expires_in(slot.to_json(), slot.ttl),
        priority=slot.priority,
    )


def _queued(obj: StoredObject, where: Where, observer: Observer) -> dict[str, Any]:
    policy = QUEUE_KINDS[obj.kind]
    rw = obj.kind == RWMUTEX
    problem = _problem(lambda: queue_state.parse(obj.status, where)) or _problem(
        lambda: policy.capacity(obj.spec, where)
    )
    held = [
        s
        for s in (queue_state.parse_slot(e, holder=True) for e in _raw_list(obj.status, "holders"))
        if s
    ]
    queued = [
        s
        for s in (queue_state.parse_slot(e, holder=False) for e in _raw_list(obj.status, "queue"))
        if s
    ]
    next_token: int | None = None
    capacity: int | None = None
    if problem is None:
        next_token = queue_state.parse(obj.status, where).next_token
        capacity = policy.capacity(obj.spec, where)
        queued = queue_state.service_order(queued, next_token)  # the order grants follow
    holders = tuple(_slot_entry(s, HOLDER, None, observer, rw) for s in held)
    waiters = tuple(_slot_entry(s, WAITER, i, observer, rw) for i, s in enumerate(queued, 1))
    if obj.kind == SEMAPHORE:
        in_use = sum(s.count for s in held)
        permits = capacity if capacity is not None else obj.spec.get("permits", "?")
        summary = f"{in_use}/{permits} in use"
    elif obj.kind == MUTEX:
        summary = "locked" if held else "free"
    else:
        readers = sum(1 for s in held if s.mode == queue_state.READ)
        writer = any(s.mode != queue_state.READ for s in held)
        summary = "write-locked" if writer else f"{readers} readers" if readers else "free"
    if queued:
        summary += f", {len(queued)} waiting"
    return {
        "summary": summary,
        "holders": holders,
        "waiters": waiters,
        "next_token": next_token,
        "capacity": capacity,
        "problem": problem,
    }


# -- lease ----------------------------------------------------------------------------


def _lease(obj: StoredObject, observer: Observer) -> dict[str, Any]:
    rec = lease_state.parse(obj.spec)
    holders: tuple[EntryStatus, ...] = ()
    if rec.holder is not None:
        tracked = lease_state.holder_entries(obj.spec)
        ttl = float(rec.duration) if rec.duration is not None else None
        holders = (
            EntryStatus(
                role=HOLDER,
                identity=rec.holder,
                id=rec.holder,
                token=rec.transitions,
                ttl=ttl,
                renewed_at=rec.renew_time,
                renewed_ago=observer.ago(rec.renew_time),
                expires_in=observer.expires_in(tracked[0], ttl),
            ),
        )
    transitions = []
    if rec.acquire_time:
        transitions.append(Transition("acquired", rec.acquire_time, rec.holder))
    if rec.renew_time:
        transitions.append(Transition("renewed", rec.renew_time, rec.holder))
    summary = "held" if holders else "free"
    if rec.preferred:
        summary += f" (preferred holder {rec.preferred})"
    return {
        "summary": summary,
        "holders": holders,
        "next_token": rec.transitions,
        "transitions": tuple(transitions),
    }


# -- once -----------------------------------------------------------------------------


def _once(obj: StoredObject, where: Where, observer: Observer) -> dict[str, Any]:
    status = obj.status
    problem = _problem(lambda: once_state.validate(status, where))
    current = once_state.state_of(status)
    attempt = once_state.attempt_of(status)
    summary = current + (f", attempt {attempt}" if attempt else "")
    holders: tuple[EntryStatus, ...] = ()
    run = once_state.run_of(status)
    if run is not None:
        ttl = float(run["ttlSeconds"])
        holders = (
            EntryStatus(
                role=RUNNER,
                identity=_text(run.get("holder")),
                id=_text(run.get("id")),
                token=_int(run.get("attempt")),
                ttl=ttl,
                renewals=_int(run.get("renewals")),
                renewed_at=_text(run.get("renewedAt")),
                renewed_ago=observer.ago(_text(run.get("renewedAt"))),
                expires_in=observer.expires_in(run, ttl),
            ),
        )
    transitions = _recorded(status, "runner", started="startedAt", done="doneAt", failed="failedAt")
    return {
        "summary": summary,
        "holders": holders,
        "next_token": attempt,
        "transitions": tuple(transitions),
        "problem": problem,
    }


# -- barrier, gate, wait group --------------------------------------------------------


def _barrier(obj: StoredObject, where: Where) -> dict[str, Any]:
    problem = _problem(lambda: barrier_state.validate(obj.status, where))
    arrived = barrier_state.arrivals(obj.status)
    expected = _int(obj.spec.get("expected"))
    summary = f"{len(arrived)}/{expected if expected is not None else '?'} arrived"
    summary += ", open" if barrier_state.is_open(obj.status) else ""
    transitions = [
        Transition("arrived", _text(e.get("arrivedAt")), _text(e.get("identity"))) for e in arrived
    ]
    if barrier_state.is_open(obj.status):
        transitions.append(Transition("opened", _text(obj.status.get("openedAt"))))
    return {
        "summary": summary,
        "capacity": expected,
        "transitions": tuple(transitions),
        "problem": problem,
    }


def _gate(obj: StoredObject, where: Where) -> dict[str, Any]:
    problem = _problem(lambda: gate_state.parse_spec(obj.spec, where))
    conds = gate_state.conditions_of(obj.spec)
    summary = "open" if obj.status.get("open") is True else "closed"
    if conds:
        summary += " (conditions: " + ", ".join(f"{c.type}/{c.name}" for c in conds) + ")"
    transitions = _recorded(obj.status, "changedBy", opened="openedAt", closed="closedAt")
    return {"summary": summary, "transitions": tuple(transitions), "problem": problem}


def _waitgroup(obj: StoredObject, where: Where) -> dict[str, Any]:
    problem = _problem(lambda: waitgroup_state.validate(obj.status, where))
    count = waitgroup_state.count_of(obj.status) or 0
    summary = f"count {count}"
    return {"summary": summary, "capacity": None, "problem": problem}


def _ratelimit(obj: StoredObject, where: Where, observer: Observer) -> dict[str, Any]:
    """Members as holders (``count`` unset: a share is a rate, shown in the summary)."""
    problem = _problem(lambda: ratelimit_state.parse_spec(obj.spec, where)) or _problem(
        lambda: ratelimit_state.parse(obj.status, where)
    )
    if problem is not None:
        return {"summary": f"rate {obj.spec.get('rate', '?')}/s", "problem": problem}
    spec = ratelimit_state.parse_spec(obj.spec, where)
    members = ratelimit_state.parse(obj.status, where)
    allocated = sum(m.share for m in members)
    holders = tuple(
        EntryStatus(
            role=HOLDER,
            identity=m.holder,
            id=m.id,
            ttl=m.ttl,
            renewals=m.renewals,
            renewed_at=m.renewed_at,
            renewed_ago=observer.ago(m.renewed_at),
            expires_in=observer.expires_in(
                {"id": m.id, "renewals": m.renewals, "ttlSeconds": m.ttl}, m.ttl
            ),
        )
        for m in members
    )
    shares = ", ".join(f"{m.holder} {m.share:g}/s" for m in members)
    summary = f"{allocated:g}/{spec.rate:g} per second allocated to {len(members)} member(s)"
    return {
        "summary": summary + (f" ({shares})" if shares and len(members) <= 5 else ""),
        "holders": holders,
        "problem": None,
    }
