"""Barrier state transitions, as pure functions of (status, expected, request).

The status is the whole truth, changed only by compare-and-swap:

``arrived``
    the parties that arrived, in arrival order: ``{identity, arrivedAt}``;
    each identity appears at most once, so arriving twice counts once
``arrivedCount``
    ``len(arrived)``, for ``kubectl get barriers``
``open`` / ``openedAt``
    set once ``arrivedCount`` reaches ``spec.expected``; a barrier that has
    opened stays open (later arrivals change nothing)

Safety: ``open`` becomes true only in a write whose ``arrived`` list already
holds ``expected`` distinct identities, so no waiter that waits for ``open``
can pass before the last arrival has been recorded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from konductor import _limits as limits
from konductor._engine import _parse as p
from konductor._engine._parse import Where
from konductor._store._kinds import BARRIER

JSON = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """``status`` to write (``None``: nothing changes); ``counted``: the party is in."""

    status: JSON | None
    counted: bool


def validate(status: Mapping[str, Any], where: Where | None = None) -> None:
    """Check ``arrived`` and ``open``; :func:`arrive` and :func:`settle` call it first.

    Raises:
        CorruptState: ``arrived`` is not a list of ``{identity}`` entries with
            distinct identities, or ``open`` is not a boolean.
    """
    where = where or Where(BARRIER)
    seen: set[str] = set()
    raw = p.array(where, "status.arrived", status.get("arrived"), max_items=limits.MAX_PARTIES)
    for i, item in enumerate(raw):
        entry = p.mapping(where, f"status.arrived[{i}]", item)
        party = p.string(
            where,
            f"status.arrived[{i}].identity",
            p.required(where, f"status.arrived[{i}]", entry, "identity"),
            min_length=1,
            max_length=limits.MAX_IDENTITY,
        )
        if party in seen:
            raise p.corrupt(where, f"status.arrived[{i}].identity", f"duplicate {party!r}")
        seen.add(party)
    if "open" in status and not isinstance(status["open"], bool):
        raise p.corrupt(where, "status.open", f"must be a boolean, got {status['open']!r}")


def arrivals(status: Mapping[str, Any]) -> list[JSON]:
    """The recorded arrivals, ignoring malformed entries."""
    value = status.get("arrived")
    if not isinstance(value, list):
        return []
    return [dict(e) for e in value if isinstance(e, dict) and isinstance(e.get("identity"), str)]


def identities(status: Mapping[str, Any]) -> list[str]:
    return [str(e["identity"]) for e in arrivals(status)]


def is_open(status: Mapping[str, Any]) -> bool:
    return status.get("open") is True


def _finish(status: Mapping[str, Any], arrived: list[JSON], expected: int, wall: str) -> JSON:
    new = copy.deepcopy(dict(status))
    new["arrived"] = arrived
    new["arrivedCount"] = len(arrived)
    if is_open(status):
        new["open"] = True
    elif len(arrived) >= expected:
        new["open"] = True
        new["openedAt"] = wall
    else:
        new["open"] = False
    return new


def arrive(
    status: Mapping[str, Any],
    expected: int,
    party: str,
    wall: str,
    *,
    where: Where | None = None,
) -> Outcome:
    """Record ``party``'s arrival, and open the barrier if it is the last one.

    An open barrier is left unchanged (it stays open; a late party is not
    recorded). A party that already arrived is not recorded twice; if the
    barrier has meanwhile become openable (``spec.expected`` was lowered) it is
    opened.

    Raises:
        CorruptState: the status does not parse (see :func:`validate`).
    """
    validate(status, where)
    if is_open(status):
        return Outcome(None, counted=party in identities(status))
    arrived = arrivals(status)
    if any(e["identity"] == party for e in arrived):
        return Outcome(settle(status, expected, wall), counted=True)
    arrived.append({"identity": party, "arrivedAt": wall})
    return Outcome(_finish(status, arrived, expected, wall), counted=True)


def settle(
    status: Mapping[str, Any], expected: int, wall: str, *, where: Where | None = None
) -> JSON | None:
    """Open a barrier that has enough arrivals but is not marked open yet, else ``None``.

    That happens only when ``spec.expected`` is lowered (``kubectl edit``)
    below the number already arrived; waiters then open it themselves.

    Raises:
        CorruptState: the status does not parse (see :func:`validate`).
    """
    validate(status, where)
    arrived = arrivals(status)
    if is_open(status) or len(arrived) < expected:
        return None
    return _finish(status, arrived, expected, wall)
