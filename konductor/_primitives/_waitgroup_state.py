"""Wait-group state transitions, as pure functions of (status, request).

The status is the whole truth, changed only by compare-and-swap:

``count``
    the outstanding work; never negative. Absent until the first add: a
    group that was just created is not "drained" yet.
``drains``
    how many times ``count`` has gone from positive to zero. A waiter
    remembers it when it starts and returns once it grows, so a waiter sees
    every drain even if the count went up again before the waiter ran
    (Go semantics: ``Wait`` returns once it has observed zero).
``ops``
    the ids of the most recent adds (at most :data:`MAX_OPS`). A write whose
    response was lost is retried by the store and then fails with a conflict;
    the compare-and-swap loop decides again on the fresh status and finds its
    id there, so every add is applied exactly once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from konductor import _limits as limits
from konductor._engine import _parse as p
from konductor._engine._parse import Where
from konductor._store._kinds import WAITGROUP

JSON = dict[str, Any]

MAX_OPS = limits.MAX_OPS


@dataclass(frozen=True)
class Outcome:
    """``status`` to write (``None``: no write); ``count`` after the add.

    ``rejected`` is true when the add would make the count negative: nothing
    is written and ``count`` is the unchanged current count.
    """

    status: JSON | None
    count: int
    rejected: bool = False


def validate(status: Mapping[str, Any], where: Where | None = None) -> None:
    """Check ``count``, ``drains`` and ``ops``; the transitions call it first.

    Raises:
        CorruptState: a negative or non-integer count or drains, or ops not a list
            of ids. Reading such a count as 0 or absent would let waiters pass.
    """
    where = where or Where(WAITGROUP)
    for key in ("count", "drains"):
        if key in status:
            p.integer(where, f"status.{key}", status[key], minimum=0, maximum=limits.MAX_TOKEN)
    ops = p.array(where, "status.ops", status.get("ops"), max_items=MAX_OPS)
    for i, op in enumerate(ops):
        p.string(where, f"status.ops[{i}]", op, max_length=limits.MAX_ID)


def count_of(status: Mapping[str, Any]) -> int | None:
    """The count, or ``None`` if no add has been recorded yet."""
    value = status.get("count")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def drains_of(status: Mapping[str, Any]) -> int:
    value = status.get("drains")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _ops(status: Mapping[str, Any]) -> list[str]:
    value = status.get("ops")
    return [str(v) for v in value] if isinstance(value, list) else []


def add(
    status: Mapping[str, Any], delta: int, op_id: str, *, where: Where | None = None
) -> Outcome:
    """Add ``delta`` (negative for done) to the count, once per ``op_id``.

    Rejected without a write if the count would go below zero. An add of 0
    writes only to record a count of 0 on a group that has none yet.

    Raises:
        CorruptState: the status does not parse (see :func:`validate`).
    """
    validate(status, where)
    current = count_of(status)
    count = current or 0
    ops = _ops(status)
    if op_id in ops:  # already applied (a retried write that succeeded)
        return Outcome(None, count)
    new_count = count + delta
    if new_count < 0:
        return Outcome(None, count, rejected=True)
    if delta == 0 and current is not None:
        return Outcome(None, count)
    new = copy.deepcopy(dict(status))
    new["count"] = new_count
    new["drains"] = drains_of(status) + (1 if count > 0 and new_count == 0 else 0)
    new["ops"] = [*ops, op_id][-MAX_OPS:]
    return Outcome(new, new_count)


def drained_since(
    status: Mapping[str, Any], drains_at_start: int, *, where: Where | None = None
) -> bool:
    """Whether a waiter that started at ``drains_at_start`` may return.

    It may when the count is zero now, or has been zero since it started.

    Raises:
        CorruptState: the status does not parse (see :func:`validate`).
    """
    validate(status, where)
    return count_of(status) == 0 or drains_of(status) > drains_at_start
