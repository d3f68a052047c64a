"""Repairing an object whose stored state does not parse, as pure transitions.

The primitives fail closed on state they cannot read (a holder that cannot be
parsed is never free capacity), so an object someone broke with ``kubectl
edit`` or a buggy writer admits nobody until an operator acts. ``delete`` is
the blunt reset; a repair keeps everything that still parses and removes only
what does not, so live holders keep their grants and waiters their place.
What is removed is a grant taken away: its owner learns at its next renewal.

Each function takes the stored object and returns the new status (``None``:
nothing to repair) with what it did, in words. What cannot be repaired
without guessing (a Once whose state is unreadable might have run; a wait
group's unreadable count might let waiters through; a spec, which only a
person sets) raises the primitive's own :class:`~konductor.CorruptState`,
whose message names the field and how to fix it by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from konductor._engine import _queue_state as queue_state
from konductor._engine._parse import Where
from konductor._errors import CorruptState, InvalidArgument
from konductor._primitives import _barrier_state as barrier_state
from konductor._primitives import _gate_state as gate_state
from konductor._primitives import _once_state as once_state
from konductor._primitives import _waitgroup_state as waitgroup_state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import BARRIER, GATE, LEASE, ONCE, WAITGROUP

from ._read import QUEUE_KINDS


@dataclass(frozen=True)
class Plan:
    """A repair decided on one version of the object."""

    status: JSON | None
    fixed: tuple[str, ...] = ()
    dropped: tuple[Mapping[str, Any], ...] = ()


def plan(obj: StoredObject, where: Where, next_token: int | None = None) -> Plan:
    """The repair of ``obj`` (``Plan(None)`` when its state parses).

    ``next_token`` is needed only when a queue's ``nextToken`` is unreadable:
    the next fencing token must not go backwards, and only the operator can
    say how high the tokens already handed out went.

    Raises:
        CorruptState: the broken part cannot be repaired without guessing (see
            the module docstring); the message says how to fix it by hand.
        InvalidArgument: ``nextToken`` is unreadable and ``next_token`` was not given.
    """
    if obj.kind in QUEUE_KINDS:
        return _queued(obj, where, next_token)
    if obj.kind == ONCE:
        return _once(obj, where)
    if obj.kind == BARRIER:
        return _barrier(obj, where)
    if obj.kind == WAITGROUP:
        waitgroup_state.validate(obj.status, where)  # a count cannot be guessed
    elif obj.kind == GATE:
        gate_state.parse_spec(obj.spec, where)  # a spec is for a person to fix
    elif obj.kind != LEASE:  # a Lease is read tolerantly, as client-go does
        raise InvalidArgument(f"{obj.kind} objects cannot be repaired")
    return Plan(None)


def _parses(check: Callable[[], object]) -> bool:
    try:
        check()
    except CorruptState:
        return False
    return True


def _queued(obj: StoredObject, where: Where, next_token: int | None) -> Plan:
    policy = QUEUE_KINDS[obj.kind]
    policy.capacity(obj.spec, where)  # a broken spec: kubectl edit, not a repair
    if _parses(lambda: queue_state.parse(obj.status, where)):
        return Plan(None)
    status = obj.status
    fixed: list[str] = []
    dropped: list[Mapping[str, Any]] = []
    kept: dict[str, list[queue_state.Slot]] = {}
    seen: set[str] = set()
    for key in ("holders", "queue"):
        raw = status.get(key)
        if raw is not None and not isinstance(raw, list):
            fixed.append(f"status.{key} was not a list: replaced by an empty one")
            raw = []
        slots = []
        for i, item in enumerate(raw or []):
            slot = queue_state.parse_slot(item, holder=key == "holders")
            if slot is None or slot.id in seen:
                why = "does not parse" if slot is None else f"repeats id {slot.id!r}"
                fixed.append(f"removed status.{key}[{i}]: it {why}")
                dropped.append(item if isinstance(item, dict) else {"value": item})
                continue
            seen.add(slot.id)
            slots.append(slot)
        kept[key] = slots
    held = max((s.token or 0 for s in kept["holders"]), default=0)
    token: int
    try:
        token = queue_state.parse({"nextToken": status.get("nextToken", 1)}).next_token
    except CorruptState:
        if next_token is None:
            raise InvalidArgument(
                f"{obj.kind} {obj.name!r}: status.nextToken ({status.get('nextToken')!r:.40}) "
                "does not parse, and fencing tokens must never go backwards: pass next_token=N, "
                "N higher than any token this object has handed out "
                f"(the highest still held is {held})"
            ) from None
        token = next_token
        fixed.append(f"status.nextToken set to {max(token, held + 1)}")
    new = copy.deepcopy(dict(status))
    new["holders"] = [s.to_json() for s in kept["holders"]]
    new["queue"] = [s.to_json() for s in kept["queue"]]
    new["nextToken"] = max(token, held + 1)
    new.update(policy.summary(new["holders"], new["queue"]))
    queue_state.parse(new, where)  # the repair itself must parse
    return Plan(new, tuple(fixed), tuple(dropped))


def _once(obj: StoredObject, where: Where) -> Plan:
    status = obj.status
    if _parses(lambda: once_state.validate(status, where)):
        return Plan(None)
    rest = {k: v for k, v in status.items() if k != "run"}
    once_state.validate(rest, where)  # state or attempt unreadable: it may have run
    new = copy.deepcopy(rest)
    fixed = ["removed status.run: the runner's claim does not parse (its run is revoked)"]
    if once_state.state_of(status) == once_state.RUNNING:
        new["state"] = once_state.PENDING
        fixed.append("status.state Running -> Pending: the next caller runs it")
    new["attempt"] = once_state.attempt_of(status)
    once_state.validate(new, where)
    return Plan(new, tuple(fixed), (copy.deepcopy(status["run"]),) if "run" in status else ())


def _barrier(obj: StoredObject, where: Where) -> Plan:
    status = obj.status
    if _parses(lambda: barrier_state.validate(status, where)):
        return Plan(None)
    fixed: list[str] = []
    dropped: list[Mapping[str, Any]] = []
    raw = status.get("arrived")
    kept: list[JSON] = []
    seen: set[str] = set()
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        one = {"arrived": [item]}
        try:
            barrier_state.validate(one, where)
        except CorruptState:
            fixed.append(f"removed status.arrived[{i}]: it does not parse")
            dropped.append(item if isinstance(item, dict) else {"value": item})
            continue
        if item["identity"] in seen:
            fixed.append(f"removed status.arrived[{i}]: it repeats {item['identity']!r}")
            continue
        seen.add(item["identity"])
        kept.append(item)
    if raw is not None and not isinstance(raw, list):
        fixed.append("status.arrived was not a list: replaced by an empty one")
    new = copy.deepcopy(dict(status))
    new["arrived"] = kept
    new["arrivedCount"] = len(kept)
    if "open" in new and not isinstance(new["open"], bool):
        # Unknown whether it opened: closed, and the next party re-opens it if
        # enough have arrived.
        fixed.append(f"status.open ({new['open']!r:.40}) set to false")
        new["open"] = False
    barrier_state.validate(new, where)
    return Plan(new, tuple(fixed), tuple(dropped))
