"""What a reservation decides, once, for both the blocking and the async engine.

Each plan is a generator (tenacity's one-iterator, two-drivers design): it
yields the next request to the semaphore (:class:`Try` one without waiting,
:class:`Wait` for one, :class:`Release` one back), receives its result (or has
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

from konductor import InvalidArgument, KonductorError
from konductor.integrations._sqlalchemy._slots import Core, Handle, permit_of

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


Step = Try | Wait | Release
Plan = Generator[Step, Handle | None, Handle | None]
T = TypeVar("T")


class Run(Generic[T]):
    """A plan being driven: ``next()`` gives each request until it returns ``None``,
    the driver sets ``result`` (or ``failure``) after each, and ``value`` at the end."""

    def __init__(self, plan: Generator[Step, Handle | None, T]) -> None:
        self._plan = plan
        self.result: Handle | None = None
        self.failure: KonductorError | None = None
        self.value: T | None = None

    def next(self) -> Step | None:
        result, failure, self.result, self.failure = self.result, self.failure, None, None
        try:
            return self._plan.send(result) if failure is None else self._plan.throw(failure)
        except StopIteration as done:
            self.value = done.value
            return None


def reserve(core: Core) -> Generator[Step, Handle | None, Handle]:
    """The first grant: as many permits as are free (down to the minimum), else wait
    for the minimum. A count above the cluster's permits (``kubectl edit``) is
    skipped for a smaller one."""
    s = core.s
    for count in range(s.pool_size, s.min_connections, -1):
        try:
            handle = yield Try(count, core.permits_arg())
        except InvalidArgument:
            core.created_semaphore = True
            continue
        core.created_semaphore = True
        if handle is not None:
            return handle
    waited = yield Wait(s.min_connections, core.permits_arg())
    assert waited is not None
    core.created_semaphore = True
    return waited


def top_up(core: Core, generation: int) -> Plan:
    """The minimum came from the queue: whatever else is free now is ours too."""
    for count in core.top_up_counts():
        try:
            handle = yield Try(count, None)
        except KonductorError:
            return None
        if handle is not None:
            if not core.add(handle, generation):
                yield Release(handle)
            return None
    return None


def reservation(core: Core, generation: int) -> Plan:
    """Reserve mode at start: the first grant, counted, then a top-up."""
    started = time.monotonic()
    handle = yield from reserve(core)
    core.add(handle, generation)
    if permit_of(handle).count < core.s.pool_size:
        yield from top_up(core, generation)
    core.reserved(started)
    return None


def grow(core: Core, generation: int) -> Plan:
    """A permit at a time, never queueing, while the pool wants more."""
    s = core.s
    while core.wants_more(generation):
        try:
            handle = yield Try(1, None)
        except KonductorError as exc:
            log.warning("could not grow the pool on semaphore %r: %s", s.semaphore, exc)
            return None
        if handle is None:
            return None
        if not core.add(handle, generation):
            yield Release(handle)
            return None
        log.info("pool on semaphore %r grew to %d", s.semaphore, core.held)
    return None


def one(core: Core) -> Generator[Step, Handle | None, Handle]:
    """Per-connection mode: one permit for one new connection, waiting for it."""
    handle = yield Wait(1, core.permits_arg())
    assert handle is not None
    core.created_semaphore = True
    core.add(handle, core.generation)
    return handle
