"""How each kind of object reads to a person and to a script.

One :class:`Row` per object: a one-line ``state`` and its ``entries``
(holders, waiters, the once's runner, the Lease's holder), each with its TTL
and last renewal time. Those times were written by other machines' clocks:
they are shown for information only; expiry is never judged on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from konductor._primitives import _barrier_state as barrier_state
from konductor._primitives import _gate_state as gate_state
from konductor._primitives import _lease_state as lease_state
from konductor._primitives import _once_state as once_state
from konductor._primitives import _waitgroup_state as waitgroup_state
from konductor._store._base import StoredObject
from konductor._store._kinds import (
    BARRIER,
    GATE,
    LEASE,
    MUTEX,
    ONCE,
    RWMUTEX,
    SEMAPHORE,
    WAITGROUP,
)
from konductor.cli._common import ago, ttl_text

JSON = dict[str, Any]


@dataclass
class Entry:
    """A holder, a waiter or a runner of an object."""

    role: str
    identity: str | None
    id: str | None = None
    token: int | None = None
    count: int | None = None
    ttl_seconds: float | None = None
    renewed_at: str | None = None

    def to_json(self) -> JSON:
        return {
            "role": self.role,
            "identity": self.identity,
            "id": self.id,
            "token": self.token,
            "count": self.count,
            "ttlSeconds": self.ttl_seconds,
            "renewedAt": self.renewed_at,
        }

    def cells(self) -> list[object]:
        return [
            self.role,
            self.identity or "-",
            "-" if self.token is None else self.token,
            ttl_text(self.ttl_seconds),
            ago(self.renewed_at),
        ]


@dataclass
class Row:
    kind: str
    name: str
    state: str
    entries: list[Entry] = field(default_factory=list)
    spec: JSON = field(default_factory=dict)
    status: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "entries": [e.to_json() for e in self.entries],
            "spec": self.spec,
            "status": self.status,
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _list(status: JSON, key: str) -> list[JSON]:
    value = status.get(key)
    return [dict(e) for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def queue_entries(status: JSON, *, modes: bool = False) -> list[Entry]:
    """Holders then waiters (in queue order) of a semaphore, mutex or read-write mutex."""
    out = []
    for role, key in (("holder", "holders"), ("waiting", "queue")):
        for e in _list(status, key):
            label = role
            if modes and e.get("mode") in ("read", "write"):
                label = f"{role} ({e['mode']})"
            out.append(
                Entry(
                    role=label,
                    identity=str(e.get("holder")) if e.get("holder") is not None else None,
                    id=str(e.get("id")) if e.get("id") is not None else None,
                    token=_int(e.get("token")),
                    count=_int(e.get("count")),
                    ttl_seconds=_num(e.get("ttlSeconds")),
                    renewed_at=e.get("renewedAt") if isinstance(e.get("renewedAt"), str) else None,
                )
            )
    return out


def in_use(status: JSON) -> int:
    return sum(_int(h.get("count")) or 1 for h in _list(status, "holders"))


def semaphore_state(obj: StoredObject) -> str:
    permits = obj.spec.get("permits", "?")
    waiting = len(_list(obj.status, "queue"))
    text = f"{in_use(obj.status)}/{permits} in use"
    return f"{text}, {waiting} waiting" if waiting else text


def lease_entries(spec: JSON) -> list[Entry]:
    rec = lease_state.parse(spec)
    if rec.holder is None:
        return []
    return [
        Entry(
            role="holder",
            identity=rec.holder,
            token=rec.transitions,
            ttl_seconds=rec.duration,
            renewed_at=rec.renew_time,
        )
    ]


def describe(obj: StoredObject) -> Row:
    """The :class:`Row` of any kind konductor keeps (and of a Lease written by anyone)."""
    kind, spec, status = obj.kind, obj.spec, obj.status
    entries: list[Entry] = []
    if kind == SEMAPHORE:
        state = semaphore_state(obj)
        entries = queue_entries(status)
    elif kind == MUTEX:
        holders = _list(status, "holders")
        waiting = len(_list(status, "queue"))
        state = "locked" if holders else "free"
        state += f", {waiting} waiting" if waiting else ""
        entries = queue_entries(status)
    elif kind == RWMUTEX:
        holders = _list(status, "holders")
        readers = sum(1 for h in holders if h.get("mode") == "read")
        writer = any(h.get("mode") == "write" for h in holders)
        state = "write-locked" if writer else f"{readers} readers" if readers else "free"
        waiting = len(_list(status, "queue"))
        state += f", {waiting} waiting" if waiting else ""
        entries = queue_entries(status, modes=True)
    elif kind == BARRIER:
        expected = spec.get("expected", "?")
        arrived = len(barrier_state.arrivals(status))
        state = f"{arrived}/{expected} arrived"
        state += ", open" if barrier_state.is_open(status) else ""
    elif kind == GATE:
        conds = gate_state.conditions_of(spec)
        state = "open" if status.get("open") is True else "closed"
        if conds:
            state += " (conditions: " + ", ".join(f"{c.type}/{c.name}" for c in conds) + ")"
    elif kind == ONCE:
        state = once_state.state_of(status)
        attempt = once_state.attempt_of(status)
        if attempt:
            state += f", attempt {attempt}"
        run = once_state.run_of(status)
        if run is not None:
            entries = [
                Entry(
                    role="runner",
                    identity=str(run.get("holder")) if run.get("holder") else None,
                    id=str(run.get("id")),
                    token=_int(run.get("attempt")),
                    ttl_seconds=_num(run.get("ttlSeconds")),
                    renewed_at=run.get("renewedAt")
                    if isinstance(run.get("renewedAt"), str)
                    else None,
                )
            ]
    elif kind == WAITGROUP:
        count = waitgroup_state.count_of(status) or 0
        state = f"count {count}"
    elif kind == LEASE:
        entries = lease_entries(spec)
        state = "held" if entries else "free"
    else:
        state = "-"
    return Row(kind.kind, obj.name, state, entries, dict(spec), dict(status))


HEADERS = ("KIND", "NAME", "STATE", "ROLE", "IDENTITY", "TOKEN", "TTL", "RENEWED")


def rows_table(rows: list[Row]) -> list[list[object]]:
    """Table rows: one per entry; an object's own columns only on its first line."""
    out: list[list[object]] = []
    for row in rows:
        head: list[object] = [row.kind, row.name, row.state]
        if not row.entries:
            out.append([*head, "", "", "", "", ""])
        for i, entry in enumerate(row.entries):
            out.append([*(head if i == 0 else ["", "", ""]), *entry.cells()])
    return out
