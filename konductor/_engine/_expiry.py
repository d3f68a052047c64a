"""Judging others' entries stale on the observer's own monotonic clock.

An entry (a holder or a queue ticket) carries an id and a renewal counter that
its owner bumps on every renewal. An observer remembers when it first saw each
entry in its current form, its *marker*: the counter and the fencing token. The
entry is stale once the observer has seen the same marker for the entry's full
TTL. A process that has just started therefore waits a full TTL before
reclaiming anything, and no comparison of wall clocks across machines is ever
made.

The token is part of the marker because a ticket promoted to a grant changes
meaning: its owner's deadline counts from a write no later than the promotion,
so an observer must start its count again at the promotion too. Had it kept
counting from when it first saw the *ticket* (perhaps unrenewed through an
outage), it could judge the fresh grant expired while its holder still runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ExpiryTracker:
    """First-seen times of entries of one object, on one observer's clock."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, float]] = {}

    def observe(self, entries: Iterable[Mapping[str, Any]], now: float) -> None:
        """Record the entries as seen at ``now``; forget entries no longer present."""
        current: dict[str, tuple[Any, float]] = {}
        for entry in entries:
            key = str(entry.get("id"))
            marker = _marker(entry)
            previous = self._seen.get(key)
            if previous is not None and previous[0] == marker:
                current[key] = previous
            else:
                current[key] = (marker, now)
        self._seen = current

    def expires_at(self, entry: Mapping[str, Any]) -> float:
        """When (monotonic) this entry becomes stale if it stays unchanged."""
        key = str(entry.get("id"))
        seen = self._seen.get(key)
        ttl = float(entry.get("ttlSeconds", 0))
        if seen is None or seen[0] != _marker(entry):
            return float("inf")  # not observed in this form yet
        return seen[1] + ttl

    def stale(self, entries: Iterable[Mapping[str, Any]], now: float) -> set[str]:
        """Ids of the entries seen unchanged for their full TTL by ``now``."""
        return {str(e.get("id")) for e in entries if self.expires_at(e) <= now}


def _marker(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    """What must stay the same for the entry to count as unchanged."""
    return (entry.get("renewals", 0), entry.get("token"))
