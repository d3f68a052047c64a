"""Queued grants (semaphore, mutex, read-write mutex) as pure transitions.

The status is the whole truth, kept in the object's status and changed only by
compare-and-swap, so these functions decide everything and touch nothing:

``holders``
    granted entries ``{id, holder, count, mode, token, ttlSeconds, renewals, renewedAt}``
``queue``
    FIFO tickets of waiters; a ticket expires like a grant, so a dead waiter
    never blocks the queue
``nextToken``
    the fencing token the next grant receives; it only ever increases (it is
    also the queue's clock for aging: one tick per grant)
summary fields
    derived for ``kubectl get`` printer columns, by the :class:`Policy`

A :class:`Policy` says when a request may be granted given the live holders
and the tickets queued ahead of it. "Ahead" is the service order
(:func:`service_order`): higher priority first, first come first served within
one priority, and every ticket gains one level of priority per
:data:`AGING_GRANTS` grants it waits, so a low priority never starves (a
ticket is served within ``AGING_GRANTS * (MAX_PRIORITY - its priority)`` grants
plus those of the tickets already ahead of it by then). Safety: a grant is added only when the
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
from konductor._engine import _parse as p
from konductor._engine._parse import Where
from konductor._errors import CorruptState
from konductor._store import _jsonpatch as jp
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


#: Grants a queued ticket waits to gain one level of priority.
AGING_GRANTS = 4


@dataclass(frozen=True)
class Request:
    """One acquisition attempt, identified by ``id`` across retries."""

    id: str
    holder: str
    count: int
    ttl: float
    mode: str = EXCLUSIVE
    priority: int = 0
    #: Fields recorded on the entry as they are (e.g. an adapter's fair-share
    #: ``member`` and ``demand``); konductor's own fields win over them.
    extra: Mapping[str, Any] = field(default_factory=dict)


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
    priority: int = 0
    queued_at: int = 0  # ``nextToken`` when the ticket was queued (its age's origin)

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
        else:
            out["queuedAt"] = self.queued_at
        if self.priority:
            out["priority"] = self.priority
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
    #: A guarded JSON Patch that makes the same change (see :func:`patch_ops`);
    #: ``None`` when only a compare-and-swap of the whole status can.
    ops: list[JSON] | None = None


_KNOWN = (
    "id",
    "holder",
    "count",
    "mode",
    "ttlSeconds",
    "renewals",
    "renewedAt",
    "token",
    "priority",
    "queuedAt",
)


_KNOWN_SET = frozenset(_KNOWN)


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _fast_slot(raw: Any, holder: bool) -> Slot | None:
    """The entry if it is well formed, checked without building messages; else ``None``.

    Every waiter parses the object after every change, so the common case of
    a good entry must be cheap; :func:`_slot` then parses a bad one again to
    say exactly what is wrong. The checks are the same as :func:`_slot`'s.
    """
    if type(raw) is not dict:
        return None
    try:
        entry_id = raw["id"]
        who = raw["holder"]
        count = raw["count"]
        mode = raw["mode"]
        ttl = raw["ttlSeconds"]
        renewals = raw["renewals"]
        renewed_at = raw["renewedAt"]
    except KeyError:
        return None
    token = raw.get("token") if holder else None
    priority = raw.get("priority", 0)
    queued_at = raw.get("queuedAt", 0)
    if not (
        type(entry_id) is str
        and 1 <= len(entry_id) <= limits.MAX_ID
        and type(who) is str
        and len(who) <= limits.MAX_IDENTITY
        and _int_in(count, 1, limits.MAX_PERMITS)
        and mode in MODES
        and type(mode) is str
        and type(ttl) in (int, float)
        and 0 < ttl <= limits.MAX_TTL
        and _int_in(renewals, 0, limits.MAX_TOKEN)
        and type(renewed_at) is str
        and len(renewed_at) <= limits.MAX_TIME
        and (not holder or _int_in(token, 1, limits.MAX_TOKEN))
        and _int_in(priority, limits.MIN_PRIORITY, limits.MAX_PRIORITY)
        and (holder or _int_in(queued_at, 0, limits.MAX_TOKEN))
    ):
        return None
    extra = {} if _KNOWN_SET.issuperset(raw) else {k: v for k, v in raw.items() if k not in _KNOWN}
    return Slot(
        id=entry_id,
        holder=who,
        count=count,
        mode=mode,
        ttl=float(ttl),
        renewals=renewals,
        renewed_at=renewed_at,
        token=token,
        extra=extra,
        priority=priority,
        queued_at=0 if holder else queued_at,
    )


def _slot(where: Where, path: str, raw: Any, *, holder: bool) -> Slot:
    fast = _fast_slot(raw, holder)
    if fast is not None:
        return fast
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
        priority=p.integer(
            where,
            f"{path}.priority",
            entry.get("priority", 0),
            minimum=limits.MIN_PRIORITY,
            maximum=limits.MAX_PRIORITY,
        ),
        queued_at=0
        if holder
        else p.integer(
            where, f"{path}.queuedAt", entry.get("queuedAt", 0), minimum=0, maximum=limits.MAX_TOKEN
        ),
    )


class _Memo:
    """The last few results of a function of one status mapping, by identity.

    Every waiter and holder of an object in a process decides on the same
    cached status after each change, and parsing it is most of the CPU a
    change costs them (64 entries: about a millisecond). Statuses are never
    changed in place once read (transitions build new ones), so a result is
    valid for as long as the mapping it was computed from lives; the memo
    keeps that mapping referenced, so its identity cannot be reused.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: dict[tuple[int, str], tuple[Mapping[str, Any], Any]] = {}

    def get(self, status: Mapping[str, Any], key: str = "") -> Any | None:
        hit = self._items.get((id(status), key))
        return hit[1] if hit is not None and hit[0] is status else None

    def put(self, status: Mapping[str, Any], value: Any, key: str = "") -> None:
        if len(self._items) >= self._size:
            self._items.pop(next(iter(self._items)))
        self._items[(id(status), key)] = (status, value)


_PARSED = _Memo()
_TRACKED = _Memo()


def parse_slot(raw: Any, *, holder: bool) -> Slot | None:
    """One raw holder entry or queue ticket, checked as :func:`parse` checks it.

    ``None`` for an entry that does not parse. For readers of single entries
    (the admin API): it does not go through :func:`parse`, whose memo is kept
    for the statuses every waiter decides on.
    """
    try:
        return _slot(_ANYWHERE, "entry", raw, holder=holder)
    except CorruptState:
        return None


def parse(status: Mapping[str, Any], where: Where | None = None) -> State:
    """The typed state of a raw status (memoized per status mapping).

    The next token is ``max(nextToken, highest held token + 1)``, so a
    ``nextToken`` written lower than a live grant never hands out a token
    that goes backwards.

    Raises:
        CorruptState: a field or entry does not parse (wrong type, missing,
            out of range, duplicate id); nothing may be granted on it.
    """
    cached = _PARSED.get(status)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    state = _parse(status, where or _ANYWHERE)
    _PARSED.put(status, state)
    return state


def _parse(status: Mapping[str, Any], where: Where) -> State:
    lists: dict[str, tuple[Slot, ...]] = {}
    seen: set[str] = set()
    for key, bound in (("holders", limits.MAX_HOLDERS), ("queue", limits.MAX_QUEUE)):
        raw = p.array(where, f"status.{key}", status.get(key), max_items=bound)
        slots = []
        for i, item in enumerate(raw):
            slot = _slot(where, f"status.{key}[{i}]", item, holder=key == "holders")
            if slot.id in seen:
                if key == "queue":
                    # A ticket appended twice (an append re-sent after its answer
                    # was lost) or still queued after its promotion: the first
                    # copy counts, the next write drops the others.
                    continue
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
    corrupt object never raises. Memoized per status mapping: do not change
    the list returned.
    """
    cached = _TRACKED.get(obj.status)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    out: list[JSON] = []
    _TRACKED.put(obj.status, out)
    try:
        parse(obj.status)
    except CorruptState:
        pass
    else:
        # The whole status parses (the common case, and the parse is shared
        # with the decisions made on it): its raw entries are the parsed ones.
        seen: set[str] = set()
        for key in ("holders", "queue"):
            for item in obj.status.get(key) or ():
                if item["id"] not in seen:
                    seen.add(item["id"])
                    out.append(item)
        return out
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


def _ranked(queue: Sequence[Slot], next_token: int) -> list[tuple[int, Slot]]:
    """(effective priority, ticket) in service order; see :func:`service_order`."""
    origin = 0
    keyed = []
    for index, ticket in enumerate(queue):
        origin = max(origin, ticket.queued_at)
        effective = ticket.priority + max(0, next_token - origin) // AGING_GRANTS
        keyed.append((-effective, index, ticket))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [(-k[0], k[2]) for k in keyed]


def service_order(queue: Sequence[Slot], next_token: int) -> list[Slot]:
    """The tickets in the order they are to be served.

    Highest effective priority first: a ticket's priority plus one level per
    :data:`AGING_GRANTS` grants since it queued (``nextToken`` counts grants).
    Ties go to the ticket queued first. A ticket's age origin is taken as no
    earlier than that of any ticket queued before it, so that, within one
    priority, order is exactly arrival order even when a ticket was appended
    with an out-of-date ``nextToken``.
    """
    return [t for _, t in _ranked(queue, next_token)]


def _ahead(queue: Sequence[Slot], next_token: int, req: Request) -> list[Slot]:
    """The tickets served before ``req``, queued or not yet (a new ticket has
    age 0 and comes after every ticket of the same effective priority)."""
    ranked = _ranked(queue, next_token)
    for i, (_, ticket) in enumerate(ranked):
        if ticket.id == req.id:
            return [t for _, t in ranked[:i]]
    return [t for effective, t in ranked if effective >= req.priority]


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
    # The lists are rebuilt below: copy only the rest (unknown fields kept).
    new = {k: copy.deepcopy(v) for k, v in status.items() if k not in ("holders", "queue")}
    new["holders"] = [h.to_json() for h in holders]
    new["queue"] = [q.to_json() for q in queue]
    new.update(policy.summarize(holders, queue))
    new["nextToken"] = token
    return new


def patch_ops(
    status: Mapping[str, Any],
    spec: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    fresh_grant: bool = False,
) -> list[JSON] | None:
    """A guarded JSON Patch taking ``status`` to ``new``; ``None`` if only a CAS can.

    The tests are exactly what the decision depended on, so writers no longer
    conflict over changes that did not matter to them:

    * a grant tests ``nextToken`` (every grant takes a token, so it is
      unchanged exactly when nobody was granted meanwhile: the permits the
      decision counted are still all that is held, or fewer) and
      ``spec.permits``, and appends the new holder; a release elsewhere, a
      renewal or a ticket queueing meanwhile does not make it fail;
    * each entry removed (released, promoted, withdrawn or purged as stale)
      or changed (renewed) is tested by its full value at its index: an
      entry judged stale is removed only if it is still unchanged;
    * the whole ``queue`` when a request is granted without having queued
      (``fresh_grant``): nobody may have queued ahead of it meanwhile (FIFO).
      Tickets only ever leave from wherever they are and join at the end, so a
      ticket appended meanwhile changes no index tested here and cannot get
      ahead of a promotion.

    A ticket joining the queue is appended with no test at all: the API server
    applies it to the current object whatever else changed, so a thousand
    waiters queueing at once never conflict. Summary fields (printer columns)
    are written as this writer computed them; concurrent writers can leave
    them behind until the next write or :func:`settle`.

    What this relies on of every writer: a new holder always comes with a new
    ``nextToken``. konductor's writers of every version do this; a person
    adding a holder by hand must raise ``nextToken`` too.
    """
    old_holders = status.get("holders")
    old_queue = status.get("queue")
    if not isinstance(old_holders, list) or not isinstance(old_queue, list):
        return None  # a first write: the fields to test do not exist yet
    if "nextToken" not in status:
        return None
    new_holders = new.get("holders")
    new_queue = new.get("queue")
    if not isinstance(new_holders, list) or not isinstance(new_queue, list):
        return None
    holder_edits = _list_edits("holders", old_holders, new_holders)
    queue_edits = _list_edits("queue", old_queue, new_queue)
    if holder_edits is None or queue_edits is None:
        return None  # not "old minus some, changed in place, plus appended": only a CAS
    ops: list[JSON] = []
    granted = any(op["op"] == "add" for op in holder_edits)
    if granted and "permits" in spec:
        ops.append({"op": "test", "path": "/spec/permits", "value": spec["permits"]})
    if fresh_grant:
        ops.append({"op": "test", "path": "/status/queue", "value": old_queue})
    ops += holder_edits
    ops += queue_edits
    if granted and status.get("nextToken") == new.get("nextToken"):
        return None  # every grant takes a token; the guard below relies on it
    if status.get("nextToken") != new.get("nextToken"):
        ops += [
            {"op": "test", "path": "/status/nextToken", "value": status["nextToken"]},
            {"op": "replace", "path": "/status/nextToken", "value": new["nextToken"]},
        ]
    for key, value in new.items():
        if key in ("holders", "queue", "nextToken"):
            continue
        if key not in status or status[key] != value:
            ops.append({"op": "add", "path": jp.pointer("status", key), "value": value})
    if any(key not in new for key in status):
        return None  # a field removed: not something a transition does
    ops = [{**op, "value": jp.canonical(op["value"])} if "value" in op else op for op in ops]
    if not all(jp.stable(op["value"]) for op in ops if op["op"] == "test"):
        return None  # a value the API server might not compare equal byte for byte
    return ops


def _list_edits(key: str, old: list[Any], new: list[Any]) -> list[JSON] | None:
    """Operations taking the stored list ``old`` to ``new``; ``None`` if they cannot.

    ``new`` must be ``old`` in order, minus some entries (each id kept at its
    first occurrence: later copies are dropped), some changed in place, plus
    entries appended at the end. Each removal and change tests the entry's
    full value at its index (so it fails if the entry changed, or anything
    before it left, meanwhile); appends test nothing. Indices go from the end
    so that each is still right when its operation applies.
    """
    old_ids = [e.get("id") if isinstance(e, dict) else None for e in old]
    first_at: dict[Any, int] = {}
    for i, entry_id in enumerate(old_ids):
        first_at.setdefault(entry_id, i)
    new_by_id = {e.get("id"): e for e in new if isinstance(e, dict)}
    kept: list[Any] = []
    edits: list[JSON] = []
    for i in reversed(range(len(old))):
        entry_id = old_ids[i]
        if entry_id in new_by_id and first_at[entry_id] == i:
            kept.append(entry_id)
            if old[i] != new_by_id[entry_id]:
                path = jp.pointer("status", key, i)
                edits += [
                    {"op": "test", "path": path, "value": old[i]},
                    {"op": "replace", "path": path, "value": new_by_id[entry_id]},
                ]
        else:
            path = jp.pointer("status", key, i)
            edits += [{"op": "test", "path": path, "value": old[i]}, {"op": "remove", "path": path}]
    kept.reverse()
    kept_set = set(kept)
    if [e.get("id") for e in new[: len(kept)]] != kept:
        return None
    appended = new[len(kept) :]
    if any(not isinstance(e, dict) or e.get("id") in kept_set for e in appended):
        return None
    path = jp.pointer("status", key, "-")
    return edits + [{"op": "add", "path": path, "value": e} for e in appended]


def settle(status: Mapping[str, Any], policy: Policy) -> Outcome:
    """Put the printer-column fields right, if a concurrent append left them behind.

    A ticket appended concurrently with a write that computed ``waiting``
    without it leaves ``waiting`` one behind. The fix tests the holders and
    the queue it counted, so it can never write a count older than the lists.
    ``Outcome(None)`` when the fields are right (or the status does not parse:
    the transitions refuse it anyway).
    """
    try:
        parsed = parse(status)
    except CorruptState:
        return Outcome(None)
    want = policy.summarize(parsed.holders, parsed.queue)
    if all(jp.equal(status.get(k), v) for k, v in want.items()):
        return Outcome(None)
    new = {**copy.deepcopy(dict(status)), **want}
    ops: list[JSON] = [
        {"op": "test", "path": "/status/holders", "value": status.get("holders")},
        {"op": "test", "path": "/status/queue", "value": status.get("queue")},
        *({"op": "add", "path": jp.pointer("status", k), "value": v} for k, v in want.items()),
    ]
    ops = [{**op, "value": jp.canonical(op["value"])} for op in ops]
    stable = all(jp.stable(op["value"]) for op in ops if op["op"] == "test")
    return Outcome(new, ops=ops if stable else None)


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
        head = service_order(waiting, token)[0]
        req = Request(head.id, head.holder, head.count, head.ttl, head.mode, head.priority)
        if not policy.can_grant(capacity, held, [], req):
            break
        held.append(replace(head, token=token, queued_at=0))
        waiting.remove(head)
        token += 1
    return held, waiting, token


def _slot_of(req: Request, wall: str, next_token: int) -> Slot:
    return Slot(
        req.id,
        req.holder,
        req.count,
        req.mode,
        req.ttl,
        0,
        wall,
        extra=copy.deepcopy(dict(req.extra)),
        priority=req.priority,
        queued_at=next_token,
    )


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
            new = _finish(status, held, waiting, token, policy)
            return Outcome(new, h.to_json(), patch_ops(status, spec, new))
    queued = any(q.id == req.id for q in queue)
    granted: Slot | None = None
    if policy.can_grant(capacity, holders, _ahead(queue, token, req), req):
        granted = replace(_slot_of(req, wall, 0), token=token, queued_at=0)
        holders = [*holders, granted]
        queue = [q for q in queue if q.id != req.id]
        token += 1
    elif not queued and enqueue:
        queue = [*queue, _slot_of(req, wall, token)]
    elif not purged:
        return Outcome(None)
    held, waiting, token = _promote(capacity, holders, queue, token, policy)
    new = _finish(status, held, waiting, token, policy)
    ops = patch_ops(status, spec, new, fresh_grant=granted is not None and not queued)
    return Outcome(new, None if granted is None else granted.to_json(), ops)


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
    new = _finish(status, held, waiting, token, policy)
    return Outcome(new, ops=patch_ops(status, spec, new))


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
    new = _finish(status, holders, queue, parsed.next_token, policy)
    return Outcome(new, ops=patch_ops(status, {}, new)), missing


def blocking_entries(
    status: Mapping[str, Any], req_id: str, *, where: Where | None = None
) -> list[JSON]:
    """Entries whose expiry could let ``req_id`` proceed: holders and tickets ahead.

    Raises:
        CorruptState: the status does not parse.
    """
    parsed = parse(status, where)
    order = service_order(parsed.queue, parsed.next_token)
    position = next((i for i, q in enumerate(order) if q.id == req_id), len(order))
    return [e.to_json() for e in (*parsed.holders, *order[:position])]
