"""The cluster-wide barrier: parties arrive, everybody waits until all have.

Every change is a pure transition from :mod:`._barrier_state` applied by
compare-and-swap, so concurrent arrivals are each counted exactly once, and
arriving twice (a retry, or the same party calling again) counts once. Waiting
is watch-driven through the barrier's shared :class:`Hub` and writes nothing,
so a timed-out or cancelled wait leaves nothing behind. An arrival is a fact:
it is not withdrawn when the arriving caller's wait times out (withdrawing
would race with the barrier opening; a retry counts once anyway).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from konductor import _observe as observe
from konductor._engine import _parse as parse
from konductor._engine import _validate as check
from konductor._engine._clock import micro_time
from konductor._engine._hub import Hub, entries_of
from konductor._engine._parse import Where
from konductor._engine._runtime import HasRuntime, Runtime
from konductor._engine._validate import Duration
from konductor._engine._waiting import deadline_of, update_fresh, watch_until
from konductor._errors import AlreadyExists, InvalidArgument, NotFound, WaitTimeout
from konductor._limits import MAX_PARTIES
from konductor._names import validate_name
from konductor._primitives import _barrier_state as state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import BARRIER

log = logging.getLogger("konductor")
_NO_ENTRIES = entries_of()  # nothing in a barrier expires
_MAX_PARTY = 253


@dataclass(frozen=True)
class BarrierInfo:
    """A barrier's state as last observed.

    ``arrived`` lists the identities that arrived, in arrival order;
    ``opened_at`` is the wall time (RFC 3339, for display) the barrier opened.
    """

    name: str
    expected: int
    arrived_count: int
    open: bool
    arrived: tuple[str, ...]
    opened_at: str | None = None

    @property
    def missing(self) -> int:
        """How many more parties must arrive before the barrier opens (0 once open)."""
        return 0 if self.open else max(0, self.expected - self.arrived_count)


def expected_of(obj: StoredObject, where: Where | None = None) -> int:
    """``spec.expected`` as the cluster has it.

    Raises:
        CorruptState: missing or not an integer in range (the CRD refuses that;
            reading it as 1 would open the barrier early).
    """
    where = where or Where(BARRIER, obj.name)
    value = parse.required(where, "spec", obj.spec, "expected")
    return parse.integer(where, "spec.expected", value, minimum=1, maximum=MAX_PARTIES)


def info_of(name: str, obj: StoredObject) -> BarrierInfo:
    ids = state.identities(obj.status)
    opened = obj.status.get("openedAt")
    return BarrierInfo(
        name=name,
        expected=expected_of(obj),
        arrived_count=len(ids),
        open=state.is_open(obj.status),
        arrived=tuple(ids),
        opened_at=opened if isinstance(opened, str) else None,
    )


def barrier_hub(rt: Runtime, name: str) -> Hub:
    """The client's shared hub of barrier ``name`` (also watched by gate conditions)."""
    return rt.hub(BARRIER, name, _NO_ENTRIES)


class _Barrier:
    def __init__(self, rt: Runtime, name: str, expected: int | None) -> None:
        self.rt = rt
        self.name = name
        self.expected = expected
        self.hub = barrier_hub(rt, name)
        self.where = Where(BARRIER, name, rt.store.namespace)

    def _wall(self) -> str:
        return micro_time(self.rt.clock.wall())

    async def ensure(self) -> StoredObject:
        """The barrier's object, created with ``expected`` if it does not exist."""
        obj = await self.hub.current()
        if obj is None:
            if self.expected is None:
                raise NotFound(
                    f"barrier {self.name!r} does not exist in namespace "
                    f"{self.rt.store.namespace!r}; pass expected=N to create it"
                )
            try:
                obj = await self.rt.store.create(BARRIER, self.name, {"expected": self.expected})
                self.hub.observe(obj)
            except AlreadyExists:
                obj = await self.hub.refresh()
                if obj is None:  # deleted again in between
                    return await self.ensure()
        cluster_expected = expected_of(obj, self.where)
        if self.expected is not None and cluster_expected != self.expected:
            log.warning(
                "barrier %r expects %d parties in the cluster, not %d as requested; the "
                "cluster wins (change it with kubectl edit barrier %s)",
                self.name,
                cluster_expected,
                self.expected,
                self.name,
            )
        return obj

    async def arrive(self, party: str) -> BarrierInfo:
        def decide(obj: StoredObject) -> tuple[JSON | None, None]:
            return state.arrive(
                obj.status, expected_of(obj, self.where), party, self._wall(), where=self.where
            ).status, None

        while True:
            await self.ensure()
            try:
                _, obj = await update_fresh(self.hub, decide)
            except NotFound:  # deleted between ensure and write: create it again
                continue
            return info_of(self.name, obj)

    def _settle(self, obj: StoredObject) -> tuple[JSON | None, None]:
        return state.settle(
            obj.status, expected_of(obj, self.where), self._wall(), where=self.where
        ), None

    @observe.operation("wait")
    async def wait(self, deadline: float | None, timeout: float | None) -> BarrierInfo:
        """Wait until the barrier is open, or monotonic ``deadline``; it may not exist yet.

        Raises:
            WaitTimeout: not open by ``deadline`` (``timeout`` is named in the message).
        """
        await self.hub.refresh()

        async def check(obj: StoredObject | None) -> BarrierInfo | None:
            if obj is None:
                return None
            if state.is_open(obj.status):
                return info_of(self.name, obj)
            if (
                state.settle(
                    obj.status, expected_of(obj, self.where), self._wall(), where=self.where
                )
                is not None
            ):
                # spec.expected was lowered below the arrivals: open it.
                with contextlib.suppress(NotFound):
                    await self.hub.update(self._settle)
            return None

        return await watch_until(
            self.hub,
            check,
            clock=self.rt.clock,
            deadline=deadline,
            timed_out=lambda obj: WaitTimeout(self._timeout_message(obj, timeout)),
        )

    def _timeout_message(self, obj: StoredObject | None, timeout: float | None) -> str:
        within = f"within {timeout:g}s" if timeout is not None else "yet"
        if obj is None:
            return (
                f"barrier {self.name!r} not open {within}: it does not exist in namespace "
                f"{self.rt.store.namespace!r} (nobody has arrived)"
            )
        info = info_of(self.name, obj)
        return (
            f"barrier {self.name!r} not open {within}: {info.arrived_count} of "
            f"{info.expected} parties arrived ({info.missing} missing)"
        )

    async def status(self) -> BarrierInfo:
        obj = await self.hub.refresh()
        if obj is None:
            raise NotFound(
                f"barrier {self.name!r} does not exist in namespace {self.rt.store.namespace!r}"
            )
        return info_of(self.name, obj)


def _party(rt: Runtime, party: str | None) -> str:
    if party is None:
        return rt.identity
    if not isinstance(party, str) or not party or len(party) > _MAX_PARTY:
        raise InvalidArgument(
            f"party must be a non-empty string of at most {_MAX_PARTY} characters "
            f"(e.g. 'worker-3'), got {party!r}",
            argument="party",
        )
    return party


def _make(rt: Runtime, name: str, expected: int | None) -> _Barrier:
    validate_name(name)
    if expected is not None:
        check.positive_int(expected, "expected", maximum=MAX_PARTIES)
    return _Barrier(rt, name, expected)


class BarrierMethods(HasRuntime):
    """The barrier methods of :class:`konductor.Client`."""

    async def arrive_barrier(
        self, name: str, expected: int | None = None, *, party: str | None = None
    ) -> BarrierInfo:
        """Record this party's arrival at barrier ``name``; do not wait.

        The barrier is created with ``expected`` parties if missing; if it
        exists the cluster's ``spec.expected`` wins (a mismatch is logged).
        Arrival is idempotent per party: arriving twice counts once. ``party``
        defaults to the client's identity; pass a stable name (e.g. the
        ``JOB_COMPLETION_INDEX`` of an indexed Job) so that a restarted process
        is not counted twice. Once open, a barrier stays open.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            NotFound: the barrier does not exist and ``expected`` was not given.
        """
        barrier = _make(self._rt, name, expected)
        return await barrier.arrive(_party(self._rt, party))

    async def wait_barrier(self, name: str, *, timeout: Duration | None = None) -> BarrierInfo:
        """Wait until barrier ``name`` is open (all expected parties arrived).

        Waits for the barrier to be created if it does not exist yet. Writes
        nothing (except to open a barrier whose ``spec.expected`` was lowered
        below the arrivals), so a timeout or cancellation leaves nothing behind.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            WaitTimeout: not open within ``timeout`` seconds; the message says
                how many of how many parties arrived.
        """
        barrier = _make(self._rt, name, None)
        wait_for = check.timeout(timeout)
        return await barrier.wait(deadline_of(self._rt.clock, wait_for), wait_for)

    async def arrive_and_wait(
        self,
        name: str,
        expected: int | None = None,
        *,
        party: str | None = None,
        timeout: Duration | None = None,
    ) -> BarrierInfo:
        """:meth:`arrive_barrier`, then :meth:`wait_barrier`.

        A timeout does not withdraw the arrival: calling again later counts
        once and waits again.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            NotFound: the barrier does not exist and ``expected`` was not given.
            WaitTimeout: not open within ``timeout`` seconds.
        """
        wait_for = check.timeout(timeout)
        barrier = _make(self._rt, name, expected)
        deadline = deadline_of(self._rt.clock, wait_for)
        info = await barrier.arrive(_party(self._rt, party))
        if info.open:
            return info
        return await barrier.wait(deadline, wait_for)

    async def barrier_status(self, name: str) -> BarrierInfo:
        """The barrier's current state (one read).

        Raises:
            InvalidName: bad name, before any API call.
            NotFound: the barrier does not exist.
        """
        return await _make(self._rt, name, None).status()
