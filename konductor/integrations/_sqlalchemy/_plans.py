"""What a reservation decides, once, for both the blocking and the async engine.

Each plan is a generator (tenacity's one-iterator, two-drivers design): it
yields the next request to the semaphore (:class:`Try` one without waiting,
:class:`Wait` for one, :class:`Release` one back, :class:`Look` at it for
rebalancing), receives its result (or has
the request's :class:`~konductor.KonductorError` thrown in) and does the
counting on the :class:`~._slots.Core` itself. The sync driver
(:mod:`._sync_core`) runs the requests on a SyncClient, the async one
(:mod:`._async_core`) awaits them on the async Client; neither decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

from konductor import InvalidArgument, KonductorError, ObjectStatus
from konductor import _integration as seam
from konductor.integrations._sqlalchemy import _shares as shares
from konductor.integrations._sqlalchemy._slots import Core, Handle, Settings, permit_of

log = logging.getLogger("konductor.sqlalchemy")


@dataclass(frozen=True)
class Try:
    """``try_acquire_semaphore(count=count)``: a handle, or ``None`` when not free."""

    count: int
    permits: int | None


@dataclass(frozen=True)
class Wait:
    """``acquire_semaphore(count=count, timeout=reserve_timeout)``: a handle."""

    count: int
    permits: int | None


@dataclass(frozen=True)
class Release:
    """Give ``handle`` back (its failure is the driver's to log or ignore)."""

    handle: Handle


@dataclass(frozen=True)
class Look:
    """``client.admin.describe("semaphore", name)``: its :class:`~konductor.ObjectStatus`."""


def noted_request(s: Settings, step: Try | Wait) -> seam.SemaphoreRequest:
    """The request of a Try or Wait step made with the engine's fair-share note.

    Raises:
        InvalidArgument: not a valid request (the settings were checked: a bug).
    """
    wait = s.reserve_timeout if isinstance(step, Wait) else None
    return seam.SemaphoreRequest.parse(s.semaphore, step.permits, step.count, s.ttl, wait)


Step = Try | Wait | Release | Look
Result = Handle | ObjectStatus | None
Plan = Generator[Step, Result, Handle | None]
T = TypeVar("T")


class Run(Generic[T]):
    """A plan being driven: ``next()`` gives each request until it returns ``None``,
    the driver sets ``result`` (or ``failure``) after each, and ``value`` at the end."""

    def __init__(self, plan: Generator[Step, Result, T]) -> None:
        self._plan = plan
        self.result: Result = None
        self.failure: KonductorError | None = None
        self.value: T | None = None

    def next(self) -> Step | None:
        result, failure, self.result, self.failure = self.result, self.failure, None, None
        try:
            return self._plan.send(result) if failure is None else self._plan.throw(failure)
        except StopIteration as done:
            self.value = done.value
            return None


def _handle(result: Result) -> Handle | None:
    assert not isinstance(result, ObjectStatus)
    return result


def reserve(core: Core) -> Generator[Step, Result, Handle]:
    """The first grant: as many permits as are free (down to the minimum), else wait
    for the minimum. A count above the cluster's permits (``kubectl edit``) is
    skipped for a smaller one."""
    s = core.s
    for count in range(s.pool_size, s.min_connections, -1):
        try:
            handle = _handle((yield Try(count, core.permits_arg())))
        except InvalidArgument:
            core.created_semaphore = True
            continue
        core.created_semaphore = True
        if handle is not None:
            return handle
    waited = _handle((yield Wait(s.min_connections, core.permits_arg())))
    assert waited is not None
    core.created_semaphore = True
    return waited


def reserve_base(core: Core) -> Generator[Step, Result, Handle]:
    """Rebalancing: the first grant is ``min_connections`` (never given back), free or
    waited for; the rest is taken as single permits, so that any of it can be given back."""
    s = core.s
    handle = _handle((yield Try(s.min_connections, core.permits_arg())))
    core.created_semaphore = True
    if handle is None:
        handle = _handle((yield Wait(s.min_connections, None)))
    assert handle is not None
    return handle


def top_up(core: Core, generation: int) -> Plan:
    """The minimum came from the queue: whatever else is free now is ours too."""
    for count in core.top_up_counts():
        try:
            handle = _handle((yield Try(count, None)))
        except KonductorError:
            return None
        if handle is not None:
            if not core.add(handle, generation):
                yield Release(handle)
            return None
    return None


def reservation(core: Core, generation: int) -> Plan:
    """Reserve mode at start: the first grant, counted, then a top-up (with
    rebalancing: up to this engine's fair share)."""
    started = time.monotonic()
    if core.s.rebalance:
        handle = yield from reserve_base(core)
        core.add(handle, generation)
        yield from rebalance(core, generation, starting=True)
    else:
        handle = yield from reserve(core)
        core.add(handle, generation)
        if permit_of(handle).count < core.s.pool_size:
            yield from top_up(core, generation)
    core.reserved(started)
    return None


def rebalance(core: Core, generation: int, *, starting: bool = False) -> Plan:
    """One read of the semaphore, and a move towards this engine's fair share:
    give permits back (idle first, see :meth:`Core.give_fair`) while another
    engine needs them, or grow to the share if the pool was exhausted."""
    s = core.s
    try:
        seen = yield Look()
    except KonductorError as exc:
        log.warning("could not read semaphore %r to rebalance: %s", s.semaphore, exc)
        return None
    assert isinstance(seen, ObjectStatus)
    try:
        census = shares.Census.of(seen.capacity or 0, seen.status)
    except KonductorError as exc:  # CorruptState: decide nothing on it
        log.warning("not rebalancing on semaphore %r: %s", s.semaphore, exc)
        return None
    held, giving = core.holding()
    decision = shares.decide(
        census,
        core.member,
        held=held,
        giving=giving,
        pool_size=s.pool_size,
        min_connections=s.min_connections,
        starting=starting,
    )
    core.share = decision.share
    log.debug("semaphore %r: held %d (giving %d), %s", s.semaphore, held, giving, decision)
    if decision.shrink:
        core.give_fair(decision.shrink, decision.why)
        return None
    if decision.cancel:
        core.keep()
    if decision.grow and (starting or core.take_demand()):
        before = core.held
        yield from grow(core, generation, up_to=decision.share, quiet=True)
        if core.held > before:
            log.info(
                "pool on semaphore %r grew from %d to %d for fairness (%s)",
                s.semaphore,
                before,
                core.held,
                decision.why,
            )
    return None


def grow(core: Core, generation: int, *, up_to: int | None = None, quiet: bool = False) -> Plan:
    """A permit at a time, never queueing, while the pool wants more (up to ``up_to``)."""
    s = core.s
    while core.wants_more(generation, up_to):
        try:
            handle = _handle((yield Try(1, None)))
        except KonductorError as exc:
            log.warning("could not grow the pool on semaphore %r: %s", s.semaphore, exc)
            return None
        if handle is None:
            return None
        if not core.add(handle, generation):
            yield Release(handle)
            return None
        if not quiet:
            log.info("pool on semaphore %r grew to %d", s.semaphore, core.held)
    return None


def one(core: Core) -> Generator[Step, Result, Handle]:
    """Per-connection mode: one permit for one new connection, waiting for it."""
    handle = _handle((yield Wait(1, core.permits_arg())))
    assert handle is not None
    core.created_semaphore = True
    core.add(handle, core.generation)
    return handle
