"""Lease (leader election) rules, as pure functions of the Lease spec.

The state is the spec of a built-in ``coordination.k8s.io/v1`` Lease, with
client-go's field semantics, so that a Go service using client-go's
``leaderelection`` package and a Python service using konductor can contend
for the same Lease:

``holderIdentity``
    who holds it; absent (or empty) when nobody does
``leaseDurationSeconds``
    how long (whole seconds) an observer must see the record unchanged before
    it may take the lease over
``acquireTime`` / ``renewTime``
    MicroTime strings (exactly six fractional digits), for people and for
    client-go; never used to decide expiry
``leaseTransitions``
    incremented whenever the holder changes: the fencing token (an int32: at its
    maximum no new holder can get a larger token, and :func:`acquire` raises
    ``CorruptState`` rather than hand out a token that goes backwards)
``preferredHolder`` (Kubernetes 1.31+)
    when it names another identity, the holder yields (:func:`yields_to`) and
    candidates other than the named one do not take the lease

Expiry is not decided here: the caller says whether it has seen the record
``(holderIdentity, renewTime, leaseTransitions)`` unchanged for
``leaseDurationSeconds`` on its own monotonic clock (client-go's
``observedTime`` rule), via :func:`holder_entries` and the expiry tracker.
Every write keeps the spec fields it does not set (e.g. ``strategy`` of
newer Kubernetes versions), so nothing another writer put there is lost.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from konductor._engine._parse import Where, corrupt
from konductor._store._kinds import LEASE

JSON = dict[str, Any]

HOLDER = "holderIdentity"
DURATION = "leaseDurationSeconds"
ACQUIRE_TIME = "acquireTime"
RENEW_TIME = "renewTime"
TRANSITIONS = "leaseTransitions"
PREFERRED = "preferredHolder"

#: ``leaseTransitions`` is an int32 in the API: a write of more is refused.
MAX_TRANSITIONS = 2**31 - 1

#: client-go's ``ReleaseOnCancel`` writes this duration with an empty holder.
RELEASED_DURATION = 1


@dataclass(frozen=True)
class Record:
    """The leader-election fields of a Lease spec, tolerant of what others wrote."""

    holder: str | None
    duration: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    preferred: str | None = None

    @property
    def held(self) -> bool:
        return self.holder is not None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse(spec: Mapping[str, Any]) -> Record:
    """Read a Lease spec; an empty or missing ``holderIdentity`` means nobody holds it."""
    holder = spec.get(HOLDER)
    renew = spec.get(RENEW_TIME)
    acquire = spec.get(ACQUIRE_TIME)
    preferred = spec.get(PREFERRED)
    return Record(
        holder=holder if isinstance(holder, str) and holder else None,
        duration=_int(spec.get(DURATION)),
        acquire_time=acquire if isinstance(acquire, str) else None,
        renew_time=renew if isinstance(renew, str) else None,
        transitions=min(MAX_TRANSITIONS, max(0, _int(spec.get(TRANSITIONS)) or 0)),
        preferred=preferred if isinstance(preferred, str) and preferred else None,
    )


def holder_entries(spec: Mapping[str, Any]) -> list[JSON]:
    """The current holder as an expiry-tracker entry (none if nobody holds it).

    The tracker remembers when this observer first saw each ``(id, renewals)``
    pair; here the id is the holder and the marker is ``(renewTime,
    leaseTransitions)``, so the record counts as unchanged exactly when
    ``(holderIdentity, renewTime, leaseTransitions)`` is. A missing duration
    counts as 0 (expired as soon as seen), as in client-go.
    """
    rec = parse(spec)
    if rec.holder is None:
        return []
    return [
        {
            "id": rec.holder,
            "renewals": (rec.renew_time, rec.transitions),
            "ttlSeconds": max(0, rec.duration or 0),
        }
    ]


@dataclass(frozen=True)
class Outcome:
    """The result of a transition.

    ``spec`` is the new spec to write, or ``None`` when nothing is written.
    ``token`` is the fencing token (``leaseTransitions``) when the caller holds
    the lease after the write, else ``None``.
    """

    spec: JSON | None
    token: int | None = None


def create(identity: str, duration: int, wall: str) -> JSON:
    """The spec of a new Lease held by ``identity``: client-go creates it with 0 transitions."""
    return {
        HOLDER: identity,
        DURATION: duration,
        ACQUIRE_TIME: wall,
        RENEW_TIME: wall,
        TRANSITIONS: 0,
    }


def acquire(
    spec: Mapping[str, Any], identity: str, duration: int, wall: str, *, expired: bool
) -> Outcome:
    """Take the lease if nobody holds it, or its holder has expired, or it is our own record.

    Never while ``preferredHolder`` names another identity: that one is to
    lead next (the holder yields to it, :func:`yields_to`); clear the field to
    let anyone lead.

    ``expired``: this observer has seen the current record unchanged for its
    ``leaseDurationSeconds``. A record held by ``identity`` itself is a
    leftover of this client (its grant was lost, or this very write was
    applied before its response was lost): the caller, which serializes its
    own acquisitions, takes it over. Every take-over increments
    ``leaseTransitions``, so each grant has a token greater than any before it.
    """
    rec = parse(spec)
    if rec.holder is not None and rec.holder != identity and not expired:
        return Outcome(None)
    if rec.preferred is not None and rec.preferred != identity:
        return Outcome(None)
    new = copy.deepcopy(dict(spec))
    token = rec.transitions + 1
    if token > MAX_TRANSITIONS:  # the API server would refuse the write, every time
        raise corrupt(
            Where(LEASE),
            "spec.leaseTransitions",
            f"is {rec.transitions}, the int32 maximum, so no new holder can get a larger "
            "fencing token (reset whatever checks the tokens downstream too)",
        )
    new.update(
        {
            HOLDER: identity,
            DURATION: duration,
            ACQUIRE_TIME: wall,
            RENEW_TIME: wall,
            TRANSITIONS: token,
        }
    )
    return Outcome(new, token)


def holds(spec: Mapping[str, Any], identity: str, token: int) -> bool:
    """Whether the grant ``(identity, token)`` is still the current one."""
    rec = parse(spec)
    return rec.holder == identity and rec.transitions == token


def yields_to(spec: Mapping[str, Any], identity: str) -> str | None:
    """The identity ``spec.preferredHolder`` names if it is not ``identity``, else ``None``.

    A holder that finds one must yield, as client-go's coordinated leader
    election does: stop renewing and treat the grant as lost, then release it
    once the work it guarded has stopped (never before, or two processes
    could act at once).
    """
    preferred = parse(spec).preferred
    return preferred if preferred is not None and preferred != identity else None


def renew(spec: Mapping[str, Any], identity: str, token: int, duration: int, wall: str) -> Outcome:
    """Refresh ``renewTime`` if ``(identity, token)`` still holds; else ``Outcome(None)`` (lost).

    ``acquireTime`` and ``leaseTransitions`` are kept, as client-go does when it renews.
    """
    if not holds(spec, identity, token):
        return Outcome(None)
    new = copy.deepcopy(dict(spec))
    new[DURATION] = duration
    new[RENEW_TIME] = wall
    return Outcome(new, token)


def release(spec: Mapping[str, Any], identity: str, token: int | None, wall: str) -> Outcome:
    """Give the lease up, as client-go's ``ReleaseOnCancel`` does.

    ``holderIdentity`` is set to ``""``, ``leaseDurationSeconds`` to 1 and both
    times to now; ``leaseTransitions`` and every other field are kept (the
    next holder increments the transitions). Nothing
    is written unless ``identity`` holds the lease, with ``token`` when one is
    given (a later grant of the same identity is not released by an old handle).
    """
    rec = parse(spec)
    if rec.holder != identity or (token is not None and rec.transitions != token):
        return Outcome(None)
    new = copy.deepcopy(dict(spec))
    new.update(
        {
            HOLDER: "",
            DURATION: RELEASED_DURATION,
            ACQUIRE_TIME: wall,
            RENEW_TIME: wall,
            TRANSITIONS: rec.transitions,
        }
    )
    return Outcome(new)


def duration_of(ttl: float) -> int:
    """Whole seconds for ``leaseDurationSeconds``: ``ttl`` rounded up (Kubernetes wants an int)."""
    whole = int(ttl)
    return whole if whole == ttl else whole + 1
