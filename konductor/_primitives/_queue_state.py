"""Queued grants (semaphore, mutex, read-write mutex) as pure transitions.

The status is the whole truth, kept in the object's status and changed only by
compare-and-swap, so these functions decide everything and touch nothing:

``holders``
    granted entries ``{id, holder, count, mode, token, ttlSeconds, renewals, renewedAt}``
``queue``
    FIFO tickets of waiters; a ticket expires like a grant, so a dead waiter
    never blocks the queue
``nextToken``
    the fencing token the next grant receives; it only ever increases
summary fields
    derived for ``kubectl get`` printer columns, by the :class:`Policy`

A :class:`Policy` says when a request may be granted given the live holders
and the tickets queued ahead of it. Safety: a grant is added only when the
policy admits it over the non-stale holders (the caller supplies which entries
are stale, judged on its own monotonic clock). Fairness: policies never admit
a request while an incompatible ticket is ahead of it.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

JSON = dict[str, Any]

READ = "read"
WRITE = "write"
EXCLUSIVE = "exclusive"


@dataclass(frozen=True)
class Request:
    """One acquisition attempt, identified by ``id`` across retries."""

    id: str
    holder: str
    count: int
    ttl: float
    mode: str = EXCLUSIVE


@dataclass(frozen=True)
class Outcome:
    """The result of a transition.

    ``status`` is the new status to write, or ``None`` when nothing changes.
    ``granted`` is the holder entry when the request holds its grant.
    """

    status: JSON | None
    granted: JSON | None = None


class Policy(Protocol):
    def can_grant(
        self, spec: Mapping[str, Any], holders: list[JSON], ahead: list[JSON], req: Request
    ) -> bool:
        """Whether ``req`` may be granted now."""

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        """Derived status fields for printer columns."""


def _count(entries: list[JSON]) -> int:
    return sum(int(e.get("count", 1)) for e in entries)


class SemaphorePolicy:
    """Up to ``spec.permits`` permits in use; strict FIFO (no barging, no starvation)."""

    def can_grant(
        self, spec: Mapping[str, Any], holders: list[JSON], ahead: list[JSON], req: Request
    ) -> bool:
        return not ahead and _count(holders) + req.count <= int(spec.get("permits", 0))

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        return {"inUse": _count(holders), "waiting": len(queue)}


class MutexPolicy:
    """One holder at a time, first come, first served."""

    def can_grant(
        self, spec: Mapping[str, Any], holders: list[JSON], ahead: list[JSON], req: Request
    ) -> bool:
        return not ahead and not holders

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        return {"holder": holders[0].get("holder") if holders else None, "waiting": len(queue)}


class RWMutexPolicy:
    """Many readers or one writer; writer-preferring.

    A writer needs no holder and nobody queued ahead. A reader needs no writer
    holding and no writer queued ahead of it, so a waiting writer stops new
    readers from overtaking it and writers do not starve.
    """

    def can_grant(
        self, spec: Mapping[str, Any], holders: list[JSON], ahead: list[JSON], req: Request
    ) -> bool:
        if req.mode == WRITE:
            return not ahead and not holders
        return not any(e.get("mode") == WRITE for e in (*holders, *ahead))

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        writer = next((h.get("holder") for h in holders if h.get("mode") == WRITE), None)
        readers = sum(1 for h in holders if h.get("mode") == READ)
        return {"writer": writer, "readers": readers, "waiting": len(queue)}


SEMAPHORE = SemaphorePolicy()
MUTEX = MutexPolicy()
RWMUTEX = RWMutexPolicy()


def _entries(status: Mapping[str, Any], key: str) -> list[JSON]:
    value = status.get(key)
    return [dict(e) for e in value] if isinstance(value, list) else []


def _finish(
    status: Mapping[str, Any], holders: list[JSON], queue: list[JSON], policy: Policy
) -> JSON:
    new = copy.deepcopy(dict(status))
    new["holders"] = holders
    new["queue"] = queue
    new.update(policy.summary(holders, queue))
    new.setdefault("nextToken", 1)
    return new


def _promote(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    holders: list[JSON],
    queue: list[JSON],
    policy: Policy,
) -> tuple[list[JSON], list[JSON], int]:
    """Grant the queue's head tickets while the policy admits them.

    The writer that frees capacity (a release, a purge of stale entries, a
    grant that leaves permits over) hands it to the next waiters in the same
    write, with their fencing tokens: a waiter finds its ticket among the
    holders and owns the grant without a write of its own. Ticket and grant
    share the waiter's id, so the renewal it already runs carries over.
    """
    token = int(status.get("nextToken", 1))
    holders, queue = list(holders), list(queue)
    while queue:
        head = queue[0]
        req = Request(
            str(head.get("id")),
            str(head.get("holder")),
            int(head.get("count", 1)),
            float(head.get("ttlSeconds", 0)),
            str(head.get("mode", EXCLUSIVE)),
        )
        if not policy.can_grant(spec, holders, [], req):
            break
        holders.append({**head, "token": token})
        queue.pop(0)
        token += 1
    return holders, queue, token


def _entry(req: Request, wall: str) -> JSON:
    return {
        "id": req.id,
        "holder": req.holder,
        "count": req.count,
        "mode": req.mode,
        "ttlSeconds": req.ttl,
        "renewals": 0,
        "renewedAt": wall,
    }


def acquire(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    req: Request,
    stale: Collection[str],
    wall: str,
    policy: Policy,
    *,
    enqueue: bool = True,
) -> Outcome:
    """Grant ``req`` if the policy admits it now; else queue it.

    With ``enqueue=False`` (a non-blocking try) a request that cannot be granted
    leaves no ticket. Stale entries are dropped whenever the status is written.
    """
    old_holders = _entries(status, "holders")
    old_queue = _entries(status, "queue")
    holders = [h for h in old_holders if h.get("id") not in stale]
    queue = [q for q in old_queue if q.get("id") not in stale]
    purged = len(holders) != len(old_holders) or len(queue) != len(old_queue)
    for h in holders:
        if h.get("id") == req.id:
            # Already granted: by a retried write that succeeded, or promoted
            # from the queue by whoever freed the capacity.
            if not purged:
                return Outcome(None, h)
            holders, queue, token = _promote(status, spec, holders, queue, policy)
            new = _finish(status, holders, queue, policy)
            new["nextToken"] = token
            return Outcome(new, h)
    position = next((i for i, q in enumerate(queue) if q.get("id") == req.id), len(queue))
    granted: JSON | None = None
    if policy.can_grant(spec, holders, queue[:position], req):
        token = int(status.get("nextToken", 1))
        granted = {**_entry(req, wall), "token": token}
        holders = [*holders, granted]
        queue = [q for q in queue if q.get("id") != req.id]
        status = {**status, "nextToken": token + 1}
    elif position == len(queue) and enqueue:
        queue = [*queue, _entry(req, wall)]
    elif not purged:
        return Outcome(None)
    holders, queue, token = _promote(status, spec, holders, queue, policy)
    new = _finish(status, holders, queue, policy)
    new["nextToken"] = token
    return Outcome(new, granted)


def release(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    ids: Collection[str],
    stale: Collection[str],
    policy: Policy,
) -> Outcome:
    """Remove the holders and tickets ``ids`` (and stale entries), granting the next waiters.

    ``None`` status if none of them were there.
    """
    old_holders = _entries(status, "holders")
    old_queue = _entries(status, "queue")
    drop = set(ids) | set(stale)
    holders = [h for h in old_holders if h.get("id") not in drop]
    queue = [q for q in old_queue if q.get("id") not in drop]
    if len(holders) == len(old_holders) and len(queue) == len(old_queue):
        return Outcome(None)
    holders, queue, token = _promote(status, spec, holders, queue, policy)
    new = _finish(status, holders, queue, policy)
    new["nextToken"] = token
    return Outcome(new)


def renew(
    status: Mapping[str, Any], ids: Collection[str], wall: str, policy: Policy
) -> tuple[Outcome, set[str]]:
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
    return Outcome(_finish(status, holders, queue, policy)), missing


def blocking_entries(status: Mapping[str, Any], req_id: str) -> list[JSON]:
    """Entries whose expiry could let ``req_id`` proceed: holders and tickets ahead."""
    queue = _entries(status, "queue")
    position = next((i for i, q in enumerate(queue) if q.get("id") == req_id), len(queue))
    return [*_entries(status, "holders"), *queue[:position]]
