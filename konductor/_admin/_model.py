"""What the admin API reports: typed, read-only views of stored objects.

Every value here is built by :mod:`._read` from a stored object through the
primitives' own ``_*_state`` parsers, so a script, the CLI and the
observability work all read the same story the primitives act on. Times
written by other machines (``renewed_at``, transition times) are the writers'
wall clocks, shown for information; expiry is judged only on this observer's
own monotonic clock (``expires_in``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HOLDER = "holder"
WAITER = "waiter"
RUNNER = "runner"


@dataclass(frozen=True)
class EntryStatus:
    """One holder, waiter or once-runner of an object.

    ``position`` is a waiter's place in the queue's service order (1: next in
    line; by ``priority``, higher first, then first come first served, with
    aging, as the grants are made).
    ``renewed_ago`` is seconds since ``renewed_at`` by this machine's wall
    clock (informational: clocks skew). ``expires_in`` is seconds until this
    observer may judge the entry stale if it stays unchanged: the full TTL for
    an entry just seen in its current form (a one-shot read), counting down
    while a watch keeps observing it. ``None`` where the field does not apply.
    """

    role: str
    identity: str | None
    id: str | None = None
    token: int | None = None
    count: int | None = None
    mode: str | None = None
    position: int | None = None
    ttl: float | None = None
    renewals: int | None = None
    renewed_at: str | None = None
    renewed_ago: float | None = None
    expires_in: float | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Transition:
    """A transition the object records: what happened, when (the writer's clock), by whom.

    ``ago`` is seconds since ``at`` by this machine's wall clock (informational).
    """

    what: str
    at: str | None
    by: str | None = None
    ago: float | None = None


@dataclass(frozen=True)
class ObjectStatus:
    """One object's full story as last observed.

    ``kind`` is the API kind (``"Semaphore"``), ``primitive`` the name users
    give it (``"semaphore"``). ``summary`` is one line (``"2/3 in use, 1
    waiting"``). ``next_token`` is the fencing token the next grant receives
    (queue kinds), the Lease's ``leaseTransitions`` or the Once's attempt.
    ``capacity`` is a semaphore's permits or a barrier's expected parties.
    ``problem`` is set when the stored state does not parse: the primitives
    refuse to act on it until it is repaired (:meth:`Admin.repair`) or
    deleted; ``holders`` and ``waiters`` then list only the entries that parse.
    """

    primitive: str
    kind: str
    name: str
    namespace: str
    summary: str
    holders: tuple[EntryStatus, ...] = ()
    waiters: tuple[EntryStatus, ...] = ()
    next_token: int | None = None
    capacity: int | None = None
    transitions: tuple[Transition, ...] = ()
    problem: str | None = None
    version: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def entries(self) -> tuple[EntryStatus, ...]:
        """Holders, then waiters in queue order."""
        return (*self.holders, *self.waiters)

    @property
    def corrupt(self) -> bool:
        return self.problem is not None


@dataclass(frozen=True)
class NamespaceStatus:
    """Every konductor object and Lease of a namespace.

    ``errors`` maps a kind that could not be listed (e.g. ``Forbidden``) to
    why: the listing is then partial.
    """

    namespace: str
    objects: tuple[ObjectStatus, ...]
    errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RepairReport:
    """What :meth:`Admin.repair` changed: ``fixed`` says how, in words (empty: nothing to do).

    ``dropped`` are the entries removed because they did not parse (their
    owners learn at their next renewal that their grant is gone).
    """

    before: ObjectStatus
    after: ObjectStatus
    fixed: tuple[str, ...]
    dropped: tuple[Mapping[str, Any], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.fixed)
