"""Fair shares of a database cap: what the semaphore shows, and what an engine does about it.

Why: a reservation first come, first served lets the first pods keep the
whole cap. With rebalancing, every engine publishes a note on each of its
semaphore entries (``member``: an id per engine and process, ``demand``: its
``pool_size``); every engine reads the semaphore (one read per
``grow_interval``), computes the same max-min fair split of the permits from
the same entries (:func:`konductor._integration.fair_split`, remainders by
sorted member id) and moves towards its own share: an engine above it gives
permits back while another member waits or holds less than its share; an
engine below it grows (``try_acquire`` of single permits) when its pool is
exhausted.

This module only decides (pure functions of the observed state, unit-tested
without a store); :mod:`._plans` turns the decision into requests and
:mod:`._slots` does the counting (idle connections first, close before
release).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from konductor import _integration as check

#: Keys of the note an engine records on its semaphore entries.
MEMBER = "member"
DEMAND = "demand"
_MAX_MEMBER = 64
_MAX_DEMAND = 1_000_000


def note(member: str, demand: int) -> dict[str, Any]:
    """What an engine records on each of its entries."""
    return {MEMBER: member, DEMAND: demand}


def _noted(extra: Mapping[str, Any]) -> tuple[str, int] | None:
    """An entry's (member, demand), or ``None`` if it carries no valid note (untrusted)."""
    member, demand = extra.get(MEMBER), extra.get(DEMAND)
    if not (type(member) is str and 1 <= len(member) <= _MAX_MEMBER):
        return None
    if not (type(demand) is int and 1 <= demand <= _MAX_DEMAND):
        return None
    return member, demand


@dataclass(frozen=True)
class Census:
    """Who shares the semaphore, as one read of it shows.

    ``others`` are permits held by entries without a valid note (other users
    of the semaphore, engines with rebalancing off): they are not shared out,
    only subtracted from ``capacity``.
    """

    capacity: int
    demands: Mapping[str, int]
    held: Mapping[str, int]
    waiting: frozenset[str]
    others: int = 0

    @classmethod
    def of(cls, capacity: int, status: Mapping[str, Any]) -> Census:
        """Raises: CorruptState: the semaphore's status does not parse."""
        holders, tickets = check.semaphore_entries(status)
        demands: dict[str, int] = {}
        held: dict[str, int] = {}
        waiting: set[str] = set()
        others = 0
        for entry in holders:
            found = _noted(entry.extra)
            if found is None:
                others += entry.count
                continue
            member, demand = found
            demands[member] = max(demands.get(member, 0), demand)
            held[member] = held.get(member, 0) + entry.count
        for entry in tickets:
            found = _noted(entry.extra)
            if found is None:
                continue
            member, demand = found
            demands[member] = max(demands.get(member, 0), demand)
            waiting.add(member)
        return cls(capacity, demands, held, frozenset(waiting), others)

    def shares(self, me: str, my_demand: int) -> dict[str, int]:
        """The fair split of what is not held by others; ``me`` is counted even when its
        entries are not visible yet."""
        demands = {**self.demands, me: self.demands.get(me, my_demand)}
        return check.fair_split(max(0, self.capacity - self.others), demands, 1)


@dataclass(frozen=True)
class Decision:
    """What an engine does after a read: give ``shrink`` permits back, or try ``grow``."""

    share: int  # this engine's target: its fair share within [min_connections, pool_size]
    shrink: int = 0
    grow: int = 0
    members: int = 1
    why: str = ""
    cancel: bool = False  # stop giving back what is not reclaimed yet: nobody needs it


def decide(
    census: Census,
    me: str,
    *,
    held: int,
    giving: int,
    pool_size: int,
    min_connections: int,
    starting: bool = False,
) -> Decision:
    """This engine's move towards its fair share.

    ``held`` is what it holds now, ``giving`` what it already decided to give
    back. It shrinks only while another member needs permits (it waits, or
    holds less than its share), never below ``min_connections``; it grows at
    most to its share (the caller grows only if its pool was exhausted).
    ``starting``: right after the reservation, only growth is considered.
    """
    shares = census.shares(me, pool_size)
    share = min(pool_size, max(min_connections, shares[me]))
    members = len(shares)
    keeps = held - giving
    needy = sorted(
        m for m in shares if m != me and (m in census.waiting or census.held.get(m, 0) < shares[m])
    )
    if not needy:
        # Nobody needs what this engine was giving back: keep what is not reclaimed yet.
        if keeps < share and giving == 0:
            return Decision(share, grow=share - keeps, members=members, why=_why(share, members))
        return Decision(share, members=members, cancel=giving > 0)
    if keeps > share and not starting:
        why = (
            f"{_why(share, members)}; {len(needy)} other engine(s) wait or hold less than "
            "their share"
        )
        return Decision(share, shrink=keeps - share, members=members, why=why)
    if keeps < share and giving == 0:
        return Decision(share, grow=share - keeps, members=members, why=_why(share, members))
    return Decision(share, members=members)


def _why(share: int, members: int) -> str:
    return f"fair share {share} among {members} engine(s)"


__all__ = ("DEMAND", "MEMBER", "Census", "Decision", "decide", "note")
