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

Untrusted input: every transition first parses the raw status and spec with
:func:`parse` into typed :class:`Slot` values; an entry or field that does not
parse raises :class:`~konductor.CorruptState` and nothing is granted (a
holder that cannot be read is never free capacity). The next token is never
lower than a token already held, whatever ``nextToken`` says.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from konductor import _limits as limits
from konductor._errors import CorruptState
from konductor._primitives import _parse as p
from konductor._primitives._parse import Where
from konductor._store._base import StoredObject
from konductor._store._kinds import MUTEX as MUTEX_KIND
from konductor._store._kinds import RWMUTEX as RWMUTEX_KIND
from konductor._store._kinds import SEMAPHORE as SEMAPHORE_KIND
from konductor._store._kinds import Kind

JSON = dict[str, Any]

READ = "read"
WRITE = "write"
EXCLUSIVE = "exclusive"
MODES = (EXCLUSIVE, READ, WRITE)

_ANYWHERE = Where(SEMAPHORE_KIND)


@dataclass(frozen=True)
class Request:
    """One acquisition attempt, identified by ``id`` across retries."""

    id: str
    holder: str
    count: int
    ttl: float
    mode: str = EXCLUSIVE


@dataclass(frozen=True)
class Slot:
    """One parsed holder entry or queue ticket (``token`` is ``None`` for a ticket).

    ``extra`` keeps fields konductor does not know (written by a newer
    version), so rewriting the entry never drops them.
    """

    id: str
    holder: str
    count: int
    mode: str
    ttl: float
    renewals: int
    renewed_at: str
    token: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        out: JSON = copy.deepcopy(dict(self.extra))
        out.update(
            id=self.id,
            holder=self.holder,
            count=self.count,
            mode=self.mode,
            ttlSeconds=self.ttl,
            renewals=self.renewals,
            renewedAt=self.renewed_at,
        )
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass(frozen=True)
class State:
    """A parsed status: holders, queue and the next fencing token."""

    holders: tuple[Slot, ...]
    queue: tuple[Slot, ...]
    next_token: int


@dataclass(frozen=True)
class Outcome:
    """The result of a transition.

    ``status`` is the new status to write, or ``None`` when nothing changes.
    ``granted`` is the holder entry when the request holds its grant.
    """

    status: JSON | None
    granted: JSON | None = None


_KNOWN = ("id", "holder", "count", "mode", "ttlSeconds", "renewals", "renewedAt", "token")


def _slot(where: Where, path: str, raw: Any, *, holder: bool) -> Slot:
    entry = p.mapping(where, path, raw)

    def need(key: str) -> Any:
        return p.required(where, path, entry, key)

    token: int | None = None
    if holder:
        token = p.integer(
            where, f"{path}.token", need("token"), minimum=1, maximum=limits.MAX_TOKEN
        )
    return Slot(
        id=p.string(where, f"{path}.id", need("id"), min_length=1, max_length=limits.MAX_ID),
        holder=p.string(where, f"{path}.holder", need("holder"), max_length=limits.MAX_IDENTITY),
        count=p.integer(
            where, f"{path}.count", need("count"), minimum=1, maximum=limits.MAX_PERMITS
        ),
        mode=p.choice(where, f"{path}.mode", need("mode"), MODES),
        ttl=p.number(
            where, f"{path}.ttlSeconds", need("ttlSeconds"), above=0, maximum=limits.MAX_TTL
        ),
        renewals=p.integer(
            where, f"{path}.renewals", need("renewals"), minimum=0, maximum=limits.MAX_TOKEN
        ),
        renewed_at=p.string(
            where, f"{path}.renewedAt", need("renewedAt"), max_length=limits.MAX_TIME
        ),
        token=token,
        extra={k: v for k, v in entry.items() if k not in _KNOWN},
    )


def parse(status: Mapping[str, Any], where: Where | None = None) -> State:
    """The typed state of a raw status.

    The next token is ``max(nextToken, highest held token + 1)``, so a
    ``nextToken`` written lower than a live grant never hands out a token
    that goes backwards.

    Raises:
        CorruptState: a field or entry does not parse (wrong type, missing,
            out of range, duplicate id); nothing may be granted on it.
    """
    where = where or _ANYWHERE
    lists: dict[str, tuple[Slot, ...]] = {}
    seen: set[str] = set()
    for key, bound in (("holders", limits.MAX_HOLDERS), ("queue", limits.MAX_QUEUE)):
        raw = p.array(where, f"status.{key}", status.get(key), max_items=bound)
        slots = []
        for i, item in enumerate(raw):
            slot = _slot(where, f"status.{key}[{i}]", item, holder=key == "holders")
            if slot.id in seen:
                raise p.corrupt(where, f"status.{key}[{i}].id", f"duplicate id {slot.id!r}")
            seen.add(slot.id)
            slots.append(slot)
        lists[key] = tuple(slots)
    written = status.get("nextToken", 1)
    next_token = p.integer(where, "status.nextToken", written, minimum=1, maximum=limits.MAX_TOKEN)
    held = max((h.token or 0 for h in lists["holders"]), default=0)
    return State(lists["holders"], lists["queue"], max(next_token, held + 1))


def tracked_entries(obj: StoredObject) -> list[JSON]:
    """The entries of ``obj`` that the expiry tracker may judge, as parsed JSON.

    Lenient where :func:`parse` is strict: an entry that does not parse is
    left out (the transitions refuse the whole object anyway), so observing a
    corrupt object never raises.
    """
    out: list[JSON] = []
    for key in ("holders", "queue"):
        raw = obj.status.get(key)
        if not isinstance(raw, list):
            continue
        for item in raw:
            try:
                # A holder's token is part of what observers track: a ticket
                # promoted to a grant must count as changed (see _expiry).
                out.append(_slot(_ANYWHERE, key, item, holder=key == "holders").to_json())
            except CorruptState:
                continue
    return out


class Policy(Protocol):
    kind: Kind

    def capacity(self, spec: Mapping[str, Any], where: Where) -> int:
        """How many permits the object has (parsed from its spec)."""

    def can_grant(
        self, capacity: int, holders: Sequence[Slot], ahead: Sequence[Slot], req: Request
    ) -> bool:
        """Whether ``req`` may be granted now."""

    def summarize(self, holders: Sequence[Slot], queue: Sequence[Slot]) -> JSON:
        """Derived status fields for printer columns."""

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        """:meth:`summarize` of raw entries, skipping those that do not parse (for messages)."""


def _lenient(entries: Sequence[Any]) -> list[Slot]:
    out = []
    for item in entries:
        try:
            out.append(_slot(_ANYWHERE, "entry", item, holder=False))
        except CorruptState:
            continue
    return out


def _count(entries: Sequence[Slot]) -> int:
    return sum(e.count for e in entries)


class _Base:
    kind: Kind = SEMAPHORE_KIND

    def capacity(self, spec: Mapping[str, Any], where: Where) -> int:
        return 1

    def summarize(self, holders: Sequence[Slot], queue: Sequence[Slot]) -> JSON:
        raise NotImplementedError

    def summary(self, holders: list[JSON], queue: list[JSON]) -> JSON:
        return self.summarize(_lenient(holders), _lenient(queue))


class SemaphorePolicy(_Base):
    """Up to ``spec.permits`` permits in use; strict FIFO (no barging, no starvation)."""

    def capacity(self, spec: Mapping[str, Any], where: Where) -> int:
        return permits_of(spec, where)

    def can_grant(
        self, capacity: int, holders: Sequence[Slot], ahead: Sequence[Slot], req: Request
    ) -> bool:
        return not ahead and _count(holders) + req.count <= capacity

    def summarize(self, holders: Sequence[Slot], queue: Sequence[Slot]) -> JSON:
        return {"inUse": _count(holders), "waiting": len(queue)}


class MutexPolicy(_Base):
    """One holder at a time, first come, first served."""

    kind = MUTEX_KIND

    def can_grant(
        self, capacity: int, holders: Sequence[Slot], ahead: Sequence[Slot], req: Request
    ) -> bool:
        return not ahead and not holders

    def summarize(self, holders: Sequence[Slot], queue: Sequence[Slot]) -> JSON:
        return {"holder": holders[0].holder if holders else None, "waiting": len(queue)}


class RWMutexPolicy(_Base):
    """Many readers or one writer; writer-preferring.

    A writer needs no holder and nobody queued ahead. A reader needs no writer
    holding and no writer queued ahead of it, so a waiting writer stops new
    readers from overtaking it and writers do not starve.
    """

    kind = RWMUTEX_KIND

    def can_grant(
        self, capacity: int, holders: Sequence[Slot], ahead: Sequence[Slot], req: Request
    ) -> bool:
        if req.mode == WRITE:
            return not ahead and not holders
        return not any(e.mode != READ for e in (*holders, *ahead))

    def summarize(self, holders: Sequence[Slot], queue: Sequence[Slot]) -> JSON:
        writer = next((h.holder for h in holders if h.mode != READ), None)
        readers = sum(1 for h in holders if h.mode == READ)
        return {"writer": writer, "readers": readers, "waiting": len(queue)}


SEMAPHORE = SemaphorePolicy()
MUTEX = MutexPolicy()
RWMUTEX = RWMutexPolicy()


def permits_of(spec: Mapping[str, Any], where: Where | None = None) -> int:
    """A semaphore's ``spec.permits``.

    Raises:
        CorruptState: missing or not an integer in 1..1,000,000.
    """
    where = where or _ANYWHERE
    value = p.required(where, "spec", spec, "permits")
    return p.integer(where, "spec.permits", value, minimum=1, maximum=limits.MAX_PERMITS)


def _finish(
    status: Mapping[str, Any],
    holders: Sequence[Slot],
    queue: Sequence[Slot],
    token: int,
    policy: Policy,
) -> JSON:
    new = copy.deepcopy(dict(status))
    new["holders"] = [h.to_json() for h in holders]
    new["queue"] = [q.to_json() for q in queue]
    new.update(policy.summarize(holders, queue))
    new["nextToken"] = token
    return new


def _promote(
    capacity: int,
    holders: Sequence[Slot],
    queue: Sequence[Slot],
    token: int,
    policy: Policy,
) -> tuple[list[Slot], list[Slot], int]:
    """Grant the queue's head tickets while the policy admits them.

    The writer that frees capacity (a release, a purge of stale entries, a
    grant that leaves permits over) hands it to the next waiters in the same
    write, with their fencing tokens: a waiter finds its ticket among the
    holders and owns the grant without a write of its own. Ticket and grant
    share the waiter's id, so the renewal it already runs carries over.
    """
    held, waiting = list(holders), list(queue)
    while waiting:
        head = waiting[0]
        req = Request(head.id, head.holder, head.count, head.ttl, head.mode)
        if not policy.can_grant(capacity, held, [], req):
            break
        held.append(replace(head, token=token))
        waiting.pop(0)
        token += 1
    return held, waiting, token


def _slot_of(req: Request, wall: str) -> Slot:
    return Slot(req.id, req.holder, req.count, req.mode, req.ttl, 0, wall)


def acquire(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    req: Request,
    stale: Collection[str],
    wall: str,
    policy: Policy,
    *,
    enqueue: bool = True,
    where: Where | None = None,
) -> Outcome:
    """Grant ``req`` if the policy admits it now; else queue it.

    With ``enqueue=False`` (a non-blocking try) a request that cannot be granted
    leaves no ticket. Stale entries are dropped whenever the status is written.

    Raises:
        CorruptState: the status or spec does not parse; nothing is granted.
    """
    where = where or Where(policy.kind)
    parsed = parse(status, where)
    capacity = policy.capacity(spec, where)
    holders = [h for h in parsed.holders if h.id not in stale]
    queue = [q for q in parsed.queue if q.id not in stale]
    purged = len(holders) != len(parsed.holders) or len(queue) != len(parsed.queue)
    token = parsed.next_token
    for h in holders:
        if h.id == req.id:
            # Already granted: by a retried write that succeeded, or promoted
            # from the queue by whoever freed the capacity.
            if not purged:
                return Outcome(None, h.to_json())
            held, waiting, token = _promote(capacity, holders, queue, token, policy)
            return Outcome(_finish(status, held, waiting, token, policy), h.to_json())
    position = next((i for i, q in enumerate(queue) if q.id == req.id), len(queue))
    granted: Slot | None = None
    if policy.can_grant(capacity, holders, queue[:position], req):
        granted = replace(_slot_of(req, wall), token=token)
        holders = [*holders, granted]
        queue = [q for q in queue if q.id != req.id]
        token += 1
    elif position == len(queue) and enqueue:
        queue = [*queue, _slot_of(req, wall)]
    elif not purged:
        return Outcome(None)
    held, waiting, token = _promote(capacity, holders, queue, token, policy)
    new = _finish(status, held, waiting, token, policy)
    return Outcome(new, None if granted is None else granted.to_json())


def release(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    ids: Collection[str],
    stale: Collection[str],
    policy: Policy,
    *,
    where: Where | None = None,
) -> Outcome:
    """Remove the holders and tickets ``ids`` (and stale entries), granting the next waiters.

    ``None`` status if none of them were there.

    Raises:
        CorruptState: the status or spec does not parse; nothing is removed.
    """
    where = where or Where(policy.kind)
    parsed = parse(status, where)
    capacity = policy.capacity(spec, where)
    drop = set(ids) | set(stale)
    holders = [h for h in parsed.holders if h.id not in drop]
    queue = [q for q in parsed.queue if q.id not in drop]
    if len(holders) == len(parsed.holders) and len(queue) == len(parsed.queue):
        return Outcome(None)
    held, waiting, token = _promote(capacity, holders, queue, parsed.next_token, policy)
    return Outcome(_finish(status, held, waiting, token, policy))


def renew(
    status: Mapping[str, Any],
    ids: Collection[str],
    wall: str,
    policy: Policy,
    *,
    where: Where | None = None,
) -> tuple[Outcome, set[str]]:
    """Bump the renewal counter of the entries ``ids``.

    Returns the outcome and the ids that are no longer present: those grants
    (or tickets) were taken away, and their owner must treat them as lost.

    Raises:
        CorruptState: the status does not parse; nothing is renewed (the
            holder loses its grant at its deadline unless it is repaired).
    """
    parsed = parse(status, where or Where(policy.kind))

    def bump(entry: Slot) -> Slot:
        if entry.id not in ids:
            return entry
        return replace(entry, renewals=entry.renewals + 1, renewed_at=wall)

    holders = [bump(h) for h in parsed.holders]
    queue = [bump(q) for q in parsed.queue]
    present = {e.id for e in (*parsed.holders, *parsed.queue) if e.id in ids}
    missing = set(ids) - present
    if not present:
        return Outcome(None), missing
    return Outcome(_finish(status, holders, queue, parsed.next_token, policy)), missing


def blocking_entries(
    status: Mapping[str, Any], req_id: str, *, where: Where | None = None
) -> list[JSON]:
    """Entries whose expiry could let ``req_id`` proceed: holders and tickets ahead.

    Raises:
        CorruptState: the status does not parse.
    """
    parsed = parse(status, where)
    queue = list(parsed.queue)
    position = next((i for i, q in enumerate(queue) if q.id == req_id), len(queue))
    return [e.to_json() for e in (*parsed.holders, *queue[:position])]
