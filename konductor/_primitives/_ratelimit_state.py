"""Rate-limit state: shares of one cluster-wide rate, as pure functions of (spec, status).

A rate limit is ``spec.rate`` tokens per second (and ``spec.burst`` tokens of
bucket, by default one second of the rate, at least 1) shared by the live
*members*: each member spends only from a local token bucket filled at its
*share* of the rate, so a call costs no API request; only membership and
share changes are written, on the renewal cadence. The status records:

``members``
    one entry per member: ``id``, ``holder``, ``share`` (tokens per second it
    may spend), ``demand`` (what it reported needing), ``ttlSeconds``,
    ``renewals`` (bumped on every write of the entry, for the expiry tracker)
    and ``renewedAt`` (for people)
``allocated`` / ``memberCount``
    the sum of the shares and the number of members (derived, for
    ``kubectl get ratelimits``)

The guarantee: **the sum of the shares in force never exceeds the rate**
(between edits of ``spec.rate``), so in any window of T seconds the whole
fleet spends at most ``burst + rate * T``. It rests on four rules:

1. *Recorded bounds what is in force.* Each member's share in force is at most
   the share its entry records: it lowers its share locally *before* writing
   the lower value, and raises it only *after* the store confirmed the write
   of the higher one. Only the owner writes its entry's share.
2. *Every increase is guarded.* A write that raises a share (a join, a
   renewal) is a compare-and-swap on the whole status, and the new share is
   capped so that the recorded sum stays within the rate (:func:`headroom`).
   Decreases need no guard. A newcomer therefore gets only what is free; the
   others give up their excess at their next renewal, and the newcomer takes
   it at one of its own (two-phase: shrink, then grow).
3. *A share is freed only after its owner stopped.* Others remove an entry
   only after seeing it unchanged for its full TTL on their own clock; its
   owner stops spending at its own deadline, 90 % of the TTL after it *sent*
   its last confirmed write (the rule of every grant in konductor), so before
   anyone can reuse the share. A member that rejoins starts with an empty
   bucket.
4. *Buckets hold their share of the burst.* A member's bucket holds at most
   ``burst * share / rate`` tokens; a raised share starts with the extra
   tokens at zero (no jump), a lowered one caps the bucket at once.

So, at any moment, sum(tokens) <= burst and sum(share) <= rate, which bounds
every window. Targets are max-min fair over the reported demands
(:func:`fair_shares`): a member using little gives its share to busy ones.

The status is untrusted (anyone with the Role can write it): :func:`parse`
refuses the whole object with ``CorruptState`` if any field does not parse;
nothing is granted on it and a member that cannot renew stops at its
deadline (fail closed).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from konductor import _limits as limits
from konductor._engine import _parse as p
from konductor._engine._fair import fair_shares
from konductor._engine._parse import Where
from konductor._errors import CorruptState
from konductor._store._base import StoredObject
from konductor._store._kinds import RATELIMIT

JSON = dict[str, Any]

_ANYWHERE = Where(RATELIMIT)
#: A relative margin kept below the rate when a share is raised, so that the
#: floating-point sum of the recorded shares can never round above it.
_MARGIN = 1e-9


@dataclass(frozen=True)
class Spec:
    """``rate`` (tokens per second) and ``burst`` (tokens), as configured."""

    rate: float
    burst: float


@dataclass(frozen=True)
class Member:
    """One member's entry, parsed."""

    id: str
    holder: str
    share: float
    demand: float
    ttl: float
    renewals: int
    renewed_at: str | None

    def to_json(self) -> JSON:
        out: JSON = {
            "id": self.id,
            "holder": self.holder,
            "share": self.share,
            "demand": self.demand,
            "ttlSeconds": self.ttl,
            "renewals": self.renewals,
        }
        if self.renewed_at is not None:
            out["renewedAt"] = self.renewed_at
        return out


def default_burst(rate: float) -> float:
    """One second of the rate, at least one token."""
    return max(1.0, rate)


def parse_spec(spec: Mapping[str, Any], where: Where | None = None) -> Spec:
    """``spec.rate`` and ``spec.burst`` (absent: :func:`default_burst`).

    Raises:
        CorruptState: ``rate`` missing or not a number in (0, MAX_RATE], or
            ``burst`` not a number in (0, MAX_BURST].
    """
    where = where or _ANYWHERE
    raw = p.required(where, "spec", spec, "rate")
    rate = p.number(where, "spec.rate", raw, above=0, maximum=limits.MAX_RATE)
    if spec.get("burst") is None:
        return Spec(rate, default_burst(rate))
    burst = p.number(where, "spec.burst", spec["burst"], above=0, maximum=limits.MAX_BURST)
    return Spec(rate, burst)


def _member(where: Where, field: str, raw: Any) -> Member:
    entry = p.mapping(where, field, raw)

    def need(key: str) -> Any:
        return p.required(where, field, entry, key)

    renewed = entry.get("renewedAt")
    return Member(
        id=p.string(where, f"{field}.id", need("id"), max_length=limits.MAX_ID, min_length=1),
        holder=p.string(where, f"{field}.holder", need("holder"), max_length=limits.MAX_IDENTITY),
        share=_non_negative(where, f"{field}.share", need("share"), limits.MAX_RATE),
        demand=_non_negative(where, f"{field}.demand", need("demand"), limits.MAX_RATE),
        ttl=p.number(
            where, f"{field}.ttlSeconds", need("ttlSeconds"), above=0, maximum=limits.MAX_TTL
        ),
        renewals=p.integer(
            where, f"{field}.renewals", need("renewals"), minimum=0, maximum=limits.MAX_TOKEN
        ),
        renewed_at=None
        if renewed is None
        else p.string(where, f"{field}.renewedAt", renewed, max_length=limits.MAX_TIME),
    )


def _non_negative(where: Where, field: str, value: Any, maximum: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    return p.number(where, field, value, above=0, maximum=maximum)


def parse(status: Mapping[str, Any], where: Where | None = None) -> tuple[Member, ...]:
    """The members of a raw status.

    Raises:
        CorruptState: ``members`` is not a list of well-formed entries with
            distinct ids. Guessing at any of it could count a share as free.
    """
    where = where or _ANYWHERE
    raw = p.array(where, "status.members", status.get("members"), max_items=limits.MAX_MEMBERS)
    members: list[Member] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        member = _member(where, f"status.members[{i}]", item)
        if member.id in seen:
            raise p.corrupt(where, f"status.members[{i}].id", f"duplicate id {member.id!r}")
        seen.add(member.id)
        members.append(member)
    return tuple(members)


def member_entries(status: Mapping[str, Any]) -> list[JSON]:
    """The entries the expiry tracker judges: none if the status does not parse.

    An object that does not parse is never acted on, so no entry of it may be
    judged stale (and removed) on its account.
    """
    try:
        members = parse(status)
    except CorruptState:
        return []
    return [{"id": m.id, "renewals": m.renewals, "ttlSeconds": m.ttl} for m in members]


def tracked_entries(obj: StoredObject) -> list[JSON]:
    """:func:`member_entries` of the object's status (the hub's ``entries``)."""
    return member_entries(obj.status)


def headroom(rate: float, members: Iterable[Member], exclude: str) -> float:
    """The most ``exclude`` may record without the recorded sum exceeding ``rate``."""
    others = math.fsum(m.share for m in members if m.id != exclude)
    free = rate - others - rate * _MARGIN
    return free if free > rate * _MARGIN else 0.0


@dataclass(frozen=True)
class Outcome:
    """``status`` to write (``None``: nothing), and the member's share in it.

    ``share`` is ``None`` when the member has no entry (it was removed: its
    membership is lost). A share is in force only once the write is
    confirmed, and never more than this.
    """

    status: JSON | None
    share: float | None


def _write(status: Mapping[str, Any], members: list[Member]) -> JSON:
    new = copy.deepcopy(dict(status))
    new["members"] = [m.to_json() for m in members]
    new["allocated"] = math.fsum(m.share for m in members)
    new["memberCount"] = len(members)
    return new


def _rebalanced(spec: Spec, members: list[Member], me: Member, demand: float) -> float:
    """``me``'s next share: its fair target if lower, else as much of it as is free."""
    targets = fair_shares(spec.rate, {m.id: m.demand for m in members} | {me.id: demand})
    target = targets[me.id]
    if target <= me.share:
        return target
    return max(me.share, min(target, headroom(spec.rate, members, me.id)))


def join(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    *,
    member_id: str,
    holder: str,
    ttl: float,
    demand: float,
    wall: str,
    drop: set[str] | frozenset[str] = frozenset(),
    where: Where | None = None,
) -> Outcome:
    """Add ``member_id`` with as much of its fair share as is free now.

    ``drop`` lists entries to remove (stale ones, and earlier memberships of
    this member, which it no longer spends). Joining again with an id already
    present (a write whose answer was lost) renews that entry instead.

    ``Outcome(None, None)`` when the member list is full (MAX_MEMBERS).

    Raises:
        CorruptState: the spec or status does not parse.
    """
    parsed = parse_spec(spec, where)
    members = [m for m in parse(status, where) if m.id not in drop]
    existing = next((m for m in members if m.id == member_id), None)
    if existing is not None:
        return renew(
            status, spec, member_id=member_id, demand=demand, wall=wall, drop=drop, where=where
        )
    if len(members) >= limits.MAX_MEMBERS:
        return Outcome(None, None)
    demand = min(max(demand, 0.0), parsed.rate)
    me = Member(member_id, holder, 0.0, demand, ttl, 0, wall)
    share = _rebalanced(parsed, members, me, demand)
    members.append(Member(member_id, holder, share, demand, ttl, 0, wall))
    return Outcome(_write(status, members), share)


def renew(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    *,
    member_id: str,
    demand: float,
    wall: str,
    drop: set[str] | frozenset[str] = frozenset(),
    where: Where | None = None,
) -> Outcome:
    """Renew ``member_id``: record its demand and move its share toward its fair target.

    A lower target is taken at once (the member lowers its share locally
    before this write is sent); a higher one only as far as the recorded sum
    allows (:func:`headroom`). ``Outcome(None, None)`` when the member's entry
    is gone.

    Raises:
        CorruptState: the spec or status does not parse.
    """
    parsed = parse_spec(spec, where)
    members = [m for m in parse(status, where) if m.id not in drop or m.id == member_id]
    index = next((i for i, m in enumerate(members) if m.id == member_id), None)
    if index is None:
        return Outcome(None, None)
    me = members[index]
    demand = min(max(demand, 0.0), parsed.rate)
    share = _rebalanced(parsed, members, me, demand)
    members[index] = Member(
        me.id, me.holder, share, demand, me.ttl, min(me.renewals + 1, limits.MAX_TOKEN), wall
    )
    return Outcome(_write(status, members), share)


def leave(
    status: Mapping[str, Any],
    member_ids: set[str] | frozenset[str],
    *,
    drop: set[str] | frozenset[str] = frozenset(),
    where: Where | None = None,
) -> JSON | None:
    """Remove ``member_ids`` (and ``drop``); ``None`` if none of them is present.

    Raises:
        CorruptState: the status does not parse.
    """
    members = parse(status, where)
    gone = set(member_ids) | set(drop)
    kept = [m for m in members if m.id not in gone]
    if len(kept) == len(members):
        return None
    return _write(status, kept)


def target_of(
    spec: Mapping[str, Any], status: Mapping[str, Any], member_id: str, where: Where | None = None
) -> float | None:
    """``member_id``'s fair target in the observed object (``None``: not a member).

    A member lowers its share in force to this at once when it observes a
    change (``kubectl edit`` of the rate, a newcomer's demand), before its
    next renewal writes it.

    Raises:
        CorruptState: the spec or status does not parse.
    """
    parsed = parse_spec(spec, where)
    members = parse(status, where)
    if not any(m.id == member_id for m in members):
        return None
    return fair_shares(parsed.rate, {m.id: m.demand for m in members})[member_id]


def share_of(status: Mapping[str, Any], member_id: str, where: Where | None = None) -> float | None:
    """The share recorded for ``member_id`` (``None``: no entry).

    Raises:
        CorruptState: the status does not parse.
    """
    for m in parse(status, where):
        if m.id == member_id:
            return m.share
    return None


class Bucket:
    """A member's local token bucket: filled at its share in force, capped at its capacity.

    Pure in time (every method takes ``now``), so it is tested exactly.
    ``tokens`` never exceeds ``capacity``; a raise of the share or capacity
    adds no tokens (the extra starts at zero), a cut caps ``tokens`` at once.
    """

    def __init__(self, now: float) -> None:
        self.share = 0.0
        self.capacity = 0.0
        self.tokens = 0.0
        self._at = now

    def refill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.capacity, self.tokens + self.share * (now - self._at))
            self._at = now

    def set(self, share: float, capacity: float, now: float) -> None:
        """Change the share and capacity from ``now`` on (tokens earned so far are kept, capped)."""
        self.refill(now)
        self.share = max(0.0, share)
        self.capacity = max(0.0, capacity)
        self.tokens = min(self.tokens, self.capacity)

    def empty(self, now: float) -> None:
        """Stop: no share, no tokens (the membership was lost or left)."""
        self.refill(now)
        self.share = self.capacity = self.tokens = 0.0

    def take(self, cost: float, now: float) -> bool:
        """Spend ``cost`` tokens if the bucket has them."""
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_for(self, cost: float, now: float) -> float | None:
        """Seconds until ``cost`` tokens are there at the current share (``None``: never)."""
        self.refill(now)
        if self.tokens >= cost:
            return 0.0
        if self.share <= 0 or cost > self.capacity:
            return None
        return (cost - self.tokens) / self.share
