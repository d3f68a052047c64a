"""Semaphore state transitions, as pure functions of (status, permits, request).

The status is the whole truth, kept in the object's status and changed only by
compare-and-swap, so these functions decide everything and touch nothing:

``holders``
    granted entries ``{id, holder, count, token, ttlSeconds, renewals, renewedAt}``
``queue``
    FIFO tickets of waiters ``{id, holder, count, ttlSeconds, renewals, ...}``;
    a ticket expires like a grant, so a dead waiter never blocks the queue
``nextToken``
    the fencing token the next grant receives; it only ever increases
``inUse`` / ``waiting``
    derived counters for ``kubectl get semaphores``

Safety: a grant is added only when the permits in use by non-stale holders
plus the request fit in ``permits``; the caller supplies which entries are
stale (judged on its own monotonic clock). Fairness: a request is granted only
when no ticket is ahead of it, so waiters are served in arrival order and a
large request is not starved by small ones.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Request:
    """One acquisition attempt, identified by ``id`` across retries."""

    id: str
    holder: str
    count: int
    ttl: float


@dataclass(frozen=True)
class Outcome:
    """The result of a transition.

    ``status`` is the new status to write, or ``None`` when nothing changes.
    ``granted`` is the holder entry when the request holds its permits.
    """

    status: JSON | None
    granted: JSON | None = None


def _entries(status: Mapping[str, Any], key: str) -> list[JSON]:
    value = status.get(key)
    return [dict(e) for e in value] if isinstance(value, list) else []


def _finish(status: Mapping[str, Any], holders: list[JSON], queue: list[JSON]) -> JSON:
    new = copy.deepcopy(dict(status))
    new["holders"] = holders
    new["queue"] = queue
    new["inUse"] = sum(int(h.get("count", 1)) for h in holders)
    new["waiting"] = len(queue)
    new.setdefault("nextToken", 1)
    return new


def _entry(req: Request, wall: str) -> JSON:
    return {
        "id": req.id,
        "holder": req.holder,
        "count": req.count,
        "ttlSeconds": req.ttl,
        "renewals": 0,
        "renewedAt": wall,
    }


def acquire(
    status: Mapping[str, Any],
    permits: int,
    req: Request,
    stale: Collection[str],
    wall: str,
    *,
    enqueue: bool = True,
) -> Outcome:
    """Grant ``req`` if it fits and nobody queued is ahead of it; else queue it.

    With ``enqueue=False`` (a non-blocking try) a request that cannot be granted
    leaves no ticket. Stale entries are dropped whenever the status is written.
    """
    old_holders = _entries(status, "holders")
    old_queue = _entries(status, "queue")
    holders = [h for h in old_holders if h.get("id") not in stale]
    queue = [q for q in old_queue if q.get("id") not in stale]
    purged = len(holders) != len(old_holders) or len(queue) != len(old_queue)
    for h in holders:
        if h.get("id") == req.id:  # already granted (a retried write that succeeded)
            return Outcome(_finish(status, holders, queue) if purged else None, h)
    position = next((i for i, q in enumerate(queue) if q.get("id") == req.id), len(queue))
    in_use = sum(int(h.get("count", 1)) for h in holders)
    if position == 0 and in_use + req.count <= permits:
        token = int(status.get("nextToken", 1))
        grant = {**_entry(req, wall), "token": token}
        new = _finish(status, [*holders, grant], [q for q in queue if q.get("id") != req.id])
        new["nextToken"] = token + 1
        return Outcome(new, grant)
    if position == len(queue) and enqueue:
        return Outcome(_finish(status, holders, [*queue, _entry(req, wall)]))
    return Outcome(_finish(status, holders, queue) if purged else None)


def release(status: Mapping[str, Any], ids: Collection[str], stale: Collection[str]) -> Outcome:
    """Remove the holders and tickets ``ids``; ``None`` status if none were there."""
    old_holders = _entries(status, "holders")
    old_queue = _entries(status, "queue")
    drop = set(ids) | set(stale)
    holders = [h for h in old_holders if h.get("id") not in drop]
    queue = [q for q in old_queue if q.get("id") not in drop]
    if len(holders) == len(old_holders) and len(queue) == len(old_queue):
        return Outcome(None)
    return Outcome(_finish(status, holders, queue))


def renew(status: Mapping[str, Any], ids: Collection[str], wall: str) -> tuple[Outcome, set[str]]:
    """Bump the renewal counter of the entries ``ids``.

    Returns the outcome and the ids that are no longer present: those grants
    (or tickets) were taken away, and their owner must treat them as lost.
    """
    holders = _entries(status, "holders")
    queue = _entries(status, "queue")
    present = set()
    for entry in (*holders, *queue):
        if entry.get("id") in ids:
            entry["renewals"] = int(entry.get("renewals", 0)) + 1
            entry["renewedAt"] = wall
            present.add(str(entry["id"]))
    missing = set(ids) - present
    if not present:
        return Outcome(None), missing
    return Outcome(_finish(status, holders, queue)), missing


def blocking_entries(status: Mapping[str, Any], req_id: str) -> list[JSON]:
    """Entries whose expiry could let ``req_id`` proceed: holders and tickets ahead."""
    queue = _entries(status, "queue")
    position = next((i for i, q in enumerate(queue) if q.get("id") == req_id), len(queue))
    return [*_entries(status, "holders"), *queue[:position]]
