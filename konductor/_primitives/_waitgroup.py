"""The cluster-wide wait group: add work, mark it done, wait until none is left.

Every add is a pure transition from :mod:`._waitgroup_state` applied by
compare-and-swap, exactly once (a retried write is recognised by its id), and
never takes the count below zero. Waiting is watch-driven and writes nothing,
so a timed-out or cancelled wait leaves nothing behind.

When the count goes up again after reaching zero: a waiter returns once it
has observed zero since it started waiting (Go's rule). Each drain to zero
is counted in ``status.drains``, so a waiter that started before a drain
returns even if new work was added before it looked again; a waiter that
starts after the re-add waits for the next drain.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from konductor._engine import _validate as check
from konductor._engine._hub import entries_of
from konductor._engine._parse import Where
from konductor._engine._runtime import HasRuntime, Runtime
from konductor._engine._validate import Duration
from konductor._engine._waiting import deadline_of, update_fresh, watch_until
from konductor._errors import AlreadyExists, InvalidArgument, NotFound, WaitTimeout
from konductor._names import validate_name
from konductor._primitives import _waitgroup_state as state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import WAITGROUP

_NO_ENTRIES = entries_of()
_MAX_DELTA = 1_000_000


@dataclass(frozen=True)
class WaitGroupInfo:
    """A wait group's state as last observed.

    ``count`` is the outstanding work (0 for a group that has had no add yet);
    ``drains`` how often the count has gone from positive to zero.
    """

    name: str
    count: int
    drains: int


def _info(name: str, obj: StoredObject) -> WaitGroupInfo:
    return WaitGroupInfo(name, state.count_of(obj.status) or 0, state.drains_of(obj.status))


class _WaitGroup:
    def __init__(self, rt: Runtime, name: str) -> None:
        self.rt = rt
        self.name = name
        self.hub = rt.hub(WAITGROUP, name, _NO_ENTRIES)
        self.where = Where(WAITGROUP, name, rt.store.namespace)

    async def add(self, delta: int) -> int:
        """Add ``delta`` and return the new count.

        Raises:
            InvalidArgument: the count would go below zero (nothing is written;
                a missing group is not created).
        """
        op_id = uuid.uuid4().hex[:16]

        def decide(obj: StoredObject) -> tuple[JSON | None, state.Outcome]:
            outcome = state.add(obj.status, delta, op_id, where=self.where)
            return outcome.status, outcome

        while True:
            obj = await self.hub.current()
            if obj is None:
                if delta < 0:
                    raise InvalidArgument(self._negative(0, delta, missing=True), argument="delta")
                try:
                    self.hub.observe(await self.rt.store.create(WAITGROUP, self.name, {}))
                except AlreadyExists:
                    await self.hub.refresh()
                continue
            try:
                outcome, _ = await update_fresh(self.hub, decide)
            except NotFound:  # deleted meanwhile: start again from a missing group
                continue
            if outcome.rejected:
                raise InvalidArgument(
                    self._negative(outcome.count, delta, missing=False), argument="delta"
                )
            return outcome.count

    def _negative(self, count: int, delta: int, *, missing: bool) -> str:
        where = "does not exist (count 0)" if missing else f"has count {count}"
        what = "done()" if delta == -1 else f"add({delta})"
        return (
            f"waitgroup {self.name!r} {where}: {what} would make it {count + delta}; "
            "more done() than add() (nothing was written)"
        )

    async def wait(self, timeout: float | None) -> WaitGroupInfo:
        clock = self.rt.clock
        deadline = deadline_of(clock, timeout)
        obj = await self.hub.refresh()
        # Drains that happen after this point count; a group that does not
        # exist yet has had none.
        start = state.drains_of(obj.status) if obj is not None else 0

        async def check(obj: StoredObject | None) -> WaitGroupInfo | None:
            if obj is not None and state.drained_since(obj.status, start, where=self.where):
                return _info(self.name, obj)
            return None

        return await watch_until(
            self.hub,
            check,
            clock=clock,
            deadline=deadline,
            timed_out=lambda obj: WaitTimeout(self._timeout_message(obj, timeout)),
        )

    def _timeout_message(self, obj: StoredObject | None, timeout: float | None) -> str:
        within = f"within {timeout:g}s" if timeout is not None else "yet"
        if obj is None:
            return (
                f"waitgroup {self.name!r} not done {within}: it does not exist in namespace "
                f"{self.rt.store.namespace!r} (nothing was added)"
            )
        count = state.count_of(obj.status)
        if count is None:
            return f"waitgroup {self.name!r} not done {within}: nothing was added yet"
        return f"waitgroup {self.name!r} not done {within}: count is {count}"

    async def info(self) -> WaitGroupInfo:
        obj = await self.hub.refresh()
        if obj is None:
            raise NotFound(
                f"waitgroup {self.name!r} does not exist in namespace {self.rt.store.namespace!r}"
            )
        return _info(self.name, obj)


def _delta(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"delta must be an integer, got {value!r}", argument="delta")
    if abs(value) > _MAX_DELTA:
        raise InvalidArgument(
            f"delta must be between -{_MAX_DELTA} and {_MAX_DELTA}, got {value}", argument="delta"
        )
    return value


class WaitGroupMethods(HasRuntime):
    """The wait-group methods of :class:`konductor.Client`."""

    async def waitgroup_add(self, name: str, delta: int = 1) -> int:
        """Add ``delta`` to wait group ``name`` (created if missing); return the new count.

        Applied exactly once even when the store retries the write.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            InvalidArgument: a negative ``delta`` would take the count below
                zero; nothing is written (and a missing group is not created).
        """
        validate_name(name)
        return await _WaitGroup(self._rt, name).add(_delta(delta))

    async def waitgroup_done(self, name: str) -> int:
        """Mark one unit of work done (``waitgroup_add(name, -1)``); return the new count.

        Raises:
            InvalidName: bad name, before any API call.
            InvalidArgument: the count is already zero (more done than add);
                nothing is written.
        """
        validate_name(name)
        return await _WaitGroup(self._rt, name).add(-1)

    async def waitgroup_wait(self, name: str, *, timeout: Duration | None = None) -> WaitGroupInfo:
        """Wait until wait group ``name`` has count zero.

        Returns once the count has been zero at some moment since the wait
        began, even if work was added again right after. A group that does
        not exist yet (or has had no add) is waited for: a waiter may start
        before the first ``waitgroup_add``.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            WaitTimeout: not drained within ``timeout`` seconds; the message
                names the group and its count.
        """
        validate_name(name)
        wait_for = check.timeout(timeout)
        return await _WaitGroup(self._rt, name).wait(wait_for)

    async def waitgroup_status(self, name: str) -> WaitGroupInfo:
        """The wait group's count (one read).

        Raises:
            InvalidName: bad name, before any API call.
            NotFound: the group does not exist.
        """
        validate_name(name)
        return await _WaitGroup(self._rt, name).info()
