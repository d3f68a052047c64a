"""The cluster-wide gate: closed until opened by hand or by its conditions.

``open_gate`` / ``close_gate`` set the gate's manual flag by compare-and-swap
(both idempotent). Waiters treat the gate as open when the flag is set OR all
of its ``spec.conditions`` are met, evaluating the conditions by watching the
named Barrier, Once and batch/v1 Job objects: one :class:`Hub` per watched
object, shared by every waiter of the process, so waiting is watch-driven and
writes nothing (a timed-out or cancelled wait leaves nothing behind).

The conditions are read from the gate's spec on every change, so a
``kubectl edit gate`` that adds or removes a condition takes effect for
waiters already waiting.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

from konductor._engine import _validate as check
from konductor._engine._clock import micro_time
from konductor._engine._hub import Hub, entries_of
from konductor._engine._parse import Where
from konductor._engine._runtime import HasRuntime, Runtime
from konductor._engine._validate import Duration
from konductor._engine._waiting import deadline_of, expired, update_fresh, wait_any
from konductor._errors import AlreadyExists, NotFound, WaitTimeout
from konductor._names import validate_name
from konductor._primitives import _gate_state as state
from konductor._primitives._barrier import barrier_hub
from konductor._primitives._gate_state import Conditions, GateCondition
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import GATE, JOB, ONCE

log = logging.getLogger("konductor")
_NO_ENTRIES = entries_of()

# Read-only hubs of Once objects, one per (runtime, name). A Once's own hub
# (built by the once primitive) tracks its runner's claim for expiry; a hub
# made here first, with no entries, would hide that claim from it, so gate
# waiters observe Onces through hubs of their own.
_ONCE_OBSERVERS: weakref.WeakKeyDictionary[Runtime, dict[str, Hub]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ConditionState:
    """One condition of a gate and whether it is met, as last observed."""

    condition: GateCondition
    met: bool
    detail: str


@dataclass(frozen=True)
class GateInfo:
    """A gate's state as last observed.

    ``open`` is what waiters go by: ``flag`` (``status.open``, set by
    :meth:`~konductor.Client.open_gate`) or every condition met.
    """

    name: str
    open: bool
    flag: bool
    conditions: tuple[ConditionState, ...]

    @property
    def pending(self) -> tuple[ConditionState, ...]:
        """The conditions not met yet."""
        return tuple(c for c in self.conditions if not c.met)


def _condition_hub(rt: Runtime, cond: GateCondition) -> Hub:
    if cond.type == "Barrier":
        return barrier_hub(rt, cond.name)
    if cond.type == "Job":
        return rt.hub(JOB, cond.name, _NO_ENTRIES)
    hubs = _ONCE_OBSERVERS.setdefault(rt, {})
    if cond.name not in hubs:
        hubs[cond.name] = Hub(rt.store, ONCE, cond.name, rt.clock, _NO_ENTRIES)
    return hubs[cond.name]


class _Gate:
    def __init__(self, rt: Runtime, name: str) -> None:
        self.rt = rt
        self.name = name
        self.hub = rt.hub(GATE, name, _NO_ENTRIES)
        self.where = Where(GATE, name, rt.store.namespace)

    async def ensure(self, conditions: tuple[GateCondition, ...] | None) -> StoredObject:
        """The gate's object, created closed (with ``conditions``) if it does not exist."""
        obj = await self.hub.current()
        if obj is None:
            spec: JSON = {"conditions": [c.to_json() for c in conditions]} if conditions else {}
            try:
                obj = await self.rt.store.create(GATE, self.name, spec)
                self.hub.observe(obj)
            except AlreadyExists:
                obj = await self.hub.refresh()
                if obj is None:  # deleted again in between
                    return await self.ensure(conditions)
        if "open" not in obj.status:  # show it closed in kubectl get gates
            try:
                _, obj = await self.hub.update(lambda o: (state.initial(o.status), None))
            except NotFound:
                return await self.ensure(conditions)
        cluster = state.parse_spec(obj.spec, self.where)
        if conditions is not None and sorted(cluster) != sorted(conditions):
            log.warning(
                "gate %r has conditions [%s] in the cluster, not [%s] as requested; the "
                "cluster wins (change them with kubectl edit gate %s)",
                self.name,
                ", ".join(map(str, cluster)),
                ", ".join(map(str, conditions)),
                self.name,
            )
        return obj

    async def set_flag(self, open_: bool) -> None:
        wall = micro_time(self.rt.clock.wall())
        while True:
            await self.ensure(None)
            try:
                await update_fresh(
                    self.hub,
                    lambda o: (state.set_open(o.status, open_, self.rt.identity, wall), None),
                )
                return
            except NotFound:  # deleted between ensure and write: create it again
                continue

    def _info(self, gate: StoredObject | None, hubs: dict[GateCondition, Hub]) -> GateInfo:
        status = gate.status if gate is not None else {}
        conds = state.parse_spec(gate.spec, self.where) if gate is not None else ()
        states = []
        for cond in conds:
            obj = hubs[cond].obj
            cond_status = obj.status if obj is not None else None
            states.append(
                ConditionState(
                    cond,
                    state.condition_met(cond, cond_status),
                    state.describe(cond, cond_status),
                )
            )
        return GateInfo(
            name=self.name,
            open=gate is not None and state.is_open(status, (s.met for s in states)),
            flag=status.get("open") is True,
            conditions=tuple(states),
        )

    async def info(self) -> GateInfo:
        gate = await self.hub.refresh()
        if gate is None:
            raise NotFound(
                f"gate {self.name!r} does not exist in namespace {self.rt.store.namespace!r}"
            )
        hubs: dict[GateCondition, Hub] = {}
        for cond in state.parse_spec(gate.spec, self.where):
            hubs[cond] = _condition_hub(self.rt, cond)
            await hubs[cond].refresh()
        return self._info(gate, hubs)

    async def wait(
        self, conditions: tuple[GateCondition, ...] | None, timeout: float | None
    ) -> GateInfo:
        clock = self.rt.clock
        deadline = deadline_of(clock, timeout)
        await self.ensure(conditions)
        await self.hub.refresh()
        hubs: dict[GateCondition, Hub] = {}
        watched: list[Hub] = []
        try:
            self.hub.retain_watch()
            watched.append(self.hub)
            while True:
                gate = self.hub.obj
                conds = state.parse_spec(gate.spec, self.where) if gate is not None else ()
                new = [c for c in conds if c not in hubs]
                for cond in new:  # a condition seen for the first time: read, then watch
                    hubs[cond] = hub = _condition_hub(self.rt, cond)
                    hub.retain_watch()
                    watched.append(hub)
                    await hub.refresh()
                if new:
                    continue  # the gate may have changed meanwhile: decide on fresh state
                seen = [(hub, hub.changes) for hub in (self.hub, *(hubs[c] for c in conds))]
                info = self._info(gate, hubs)
                if info.open:
                    return info
                if expired(clock, deadline):
                    raise WaitTimeout(self._timeout_message(info, gate, timeout))
                await wait_any(seen, deadline)
        finally:
            for hub in watched:
                hub.release_watch()

    def _timeout_message(
        self, info: GateInfo, gate: StoredObject | None, timeout: float | None
    ) -> str:
        within = f"within {timeout:g}s" if timeout is not None else "yet"
        head = f"gate {self.name!r} not open {within}"
        if gate is None:
            return f"{head}: it was deleted while waiting"
        if not info.conditions:
            return f"{head}: waiting for open_gate({self.name!r}) (it has no conditions)"
        return f"{head}: waiting for open_gate({self.name!r}) or all of: " + "; ".join(
            c.detail for c in info.conditions
        )


def _conditions(value: Conditions | None) -> tuple[GateCondition, ...] | None:
    return None if value is None else state.parse_conditions(value)


class GateMethods(HasRuntime):
    """The gate methods of :class:`konductor.Client`."""

    async def create_gate(self, name: str, *, conditions: Conditions | None = None) -> GateInfo:
        """Create gate ``name`` (closed) with ``conditions`` if it does not exist.

        ``conditions`` is a list of :class:`GateCondition` (or mappings
        ``{"type": "Barrier"|"Once"|"Job", "name": ...}``) naming objects in
        the same namespace; waiters treat the gate as open once all are met.
        If the gate exists, the cluster's conditions win (a mismatch is logged).

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
        """
        validate_name(name)
        conds = _conditions(conditions)
        gate = _Gate(self._rt, name)
        await gate.ensure(conds)
        return await gate.info()

    async def open_gate(self, name: str) -> None:
        """Open gate ``name`` (created if missing); idempotent. Waiters pass.

        Raises:
            InvalidName: bad name, before any API call.
        """
        validate_name(name)
        await _Gate(self._rt, name).set_flag(True)

    async def close_gate(self, name: str) -> None:
        """Close gate ``name`` (created closed if missing); idempotent.

        Later waiters wait again, unless the gate's conditions are all met
        (closing clears only the flag that :meth:`open_gate` sets).

        Raises:
            InvalidName: bad name, before any API call.
        """
        validate_name(name)
        await _Gate(self._rt, name).set_flag(False)

    async def wait_gate(
        self, name: str, *, conditions: Conditions | None = None, timeout: Duration | None = None
    ) -> GateInfo:
        """Wait until gate ``name`` is open: opened by hand, or all its conditions met.

        A missing gate is created closed, with ``conditions`` if given (as
        :meth:`create_gate`). Watch-driven; writes nothing while waiting.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            WaitTimeout: not open within ``timeout`` seconds; the message names
                the gate and each condition it still waits for.
        """
        validate_name(name)
        conds = _conditions(conditions)
        wait_for = check.timeout(timeout)
        return await _Gate(self._rt, name).wait(conds, wait_for)

    async def gate_status(self, name: str) -> GateInfo:
        """The gate's state, its conditions evaluated now (one read per object).

        Raises:
            InvalidName: bad name, before any API call.
            NotFound: the gate does not exist.
        """
        validate_name(name)
        return await _Gate(self._rt, name).info()
