"""Gate state and conditions, as pure functions.

A gate's ``status.open`` is its manual flag, set by ``open_gate`` and cleared
by ``close_gate`` (``openedAt`` / ``closedAt`` / ``changedBy`` record who and
when, for people). Its ``spec.conditions`` name other objects; waiters treat
the gate as open when the flag is set OR every condition is met:

``Barrier``
    the barrier's ``status.open`` is true
``Once``
    the once's ``status.state`` is ``"Done"``
``Job``
    the ``batch/v1`` Job has a condition ``Complete`` with status ``"True"``

A gate without conditions is opened only by its flag. Waiters never write: a
condition being met opens the gate for them without changing its status.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from konductor import _limits as limits
from konductor._engine import _parse as p
from konductor._engine._parse import Where
from konductor._errors import InvalidArgument
from konductor._names import validate_name
from konductor._store._kinds import GATE

JSON = dict[str, Any]

TYPES = ("Barrier", "Once", "Job")
MAX_CONDITIONS = limits.MAX_CONDITIONS
_BY_LOWER = {t.lower(): t for t in TYPES}


@dataclass(frozen=True, order=True)
class GateCondition:
    """One condition of a gate: the object ``name`` of kind ``type`` in the gate's namespace.

    Build one with :meth:`barrier`, :meth:`once` or :meth:`job`, or pass a
    mapping ``{"type": "Barrier", "name": "all-ready"}`` wherever conditions
    are accepted.
    """

    type: str
    name: str

    @classmethod
    def barrier(cls, name: str) -> GateCondition:
        """Met when barrier ``name`` is open."""
        return cls("Barrier", name)

    @classmethod
    def once(cls, name: str) -> GateCondition:
        """Met when once ``name`` is done."""
        return cls("Once", name)

    @classmethod
    def job(cls, name: str) -> GateCondition:
        """Met when the batch/v1 Job ``name`` has completed."""
        return cls("Job", name)

    def to_json(self) -> JSON:
        return {"type": self.type, "name": self.name}

    def __str__(self) -> str:
        return f"{self.type} {self.name!r}"


ConditionLike: TypeAlias = "GateCondition | Mapping[str, str] | tuple[str, str]"
"""One gate condition as a caller may give it (parsed by :func:`parse_conditions`)."""

Conditions: TypeAlias = "Iterable[ConditionLike]"
"""A gate's conditions as a caller may give them: a list of :data:`ConditionLike`."""


def _one(value: ConditionLike) -> GateCondition:
    type_: str | None
    name: str | None
    if isinstance(value, GateCondition):
        type_, name = value.type, value.name
    elif isinstance(value, Mapping):
        type_, name = value.get("type"), value.get("name")
        extra = set(value) - {"type", "name"}
        if extra:
            raise InvalidArgument(
                f"gate condition {dict(value)!r} has unknown keys {sorted(extra)}; "
                "a condition is {'type': 'Barrier'|'Once'|'Job', 'name': ...}",
                argument="conditions",
            )
    elif isinstance(value, tuple) and len(value) == 2:
        type_, name = value
    else:
        raise InvalidArgument(
            f"a gate condition is a GateCondition or a mapping "
            f"{{'type': 'Barrier'|'Once'|'Job', 'name': ...}}, got {value!r}",
            argument="conditions",
        )
    canonical = _BY_LOWER.get(type_.lower()) if isinstance(type_, str) else None
    if canonical is None:
        raise InvalidArgument(
            f"gate condition type must be one of {', '.join(TYPES)}, got {type_!r}",
            argument="conditions",
        )
    # validate_name checks at run time what the types only promise (a str).
    return GateCondition(
        canonical, validate_name(cast(str, name), what=f"{canonical} condition name")
    )


def parse_conditions(value: Conditions) -> tuple[GateCondition, ...]:
    """Validate conditions given by a caller, before any API call.

    Raises:
        InvalidArgument / InvalidName: not a list of valid conditions.
    """
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidArgument(
            f"conditions must be a list of gate conditions, got {value!r}; "
            "e.g. [GateCondition.barrier('all-ready'), GateCondition.job('migrate')]",
            argument="conditions",
        )
    out: list[GateCondition] = []
    for item in value:
        cond = _one(item)
        if cond not in out:
            out.append(cond)
    if len(out) > MAX_CONDITIONS:
        raise InvalidArgument(
            f"conditions: at most {MAX_CONDITIONS} per gate, got {len(out)}", argument="conditions"
        )
    return tuple(out)


def parse_spec(spec: Mapping[str, Any], where: Where | None = None) -> tuple[GateCondition, ...]:
    """The conditions a gate's spec declares, for deciding whether it is open.

    Raises:
        CorruptState: ``spec.conditions`` is not a list of ``{type, name}``
            (skipping a condition that does not parse would open the gate early).
    """
    where = where or Where(GATE)
    raw = p.array(where, "spec.conditions", spec.get("conditions"), max_items=MAX_CONDITIONS)
    out: list[GateCondition] = []
    for i, item in enumerate(raw):
        field = f"spec.conditions[{i}]"
        entry = p.mapping(where, field, item)
        type_ = p.choice(where, f"{field}.type", p.required(where, field, entry, "type"), TYPES)
        name = p.string(
            where,
            f"{field}.name",
            p.required(where, field, entry, "name"),
            min_length=1,
            max_length=limits.MAX_IDENTITY,
        )
        cond = GateCondition(type_, name)
        if cond not in out:
            out.append(cond)
    return tuple(out)


def conditions_of(spec: Mapping[str, Any]) -> tuple[GateCondition, ...]:
    """The conditions a gate's spec declares, for display (entries that do not parse are
    skipped; :func:`parse_spec` refuses them instead)."""
    raw = spec.get("conditions")
    if not isinstance(raw, list):
        return ()
    out: list[GateCondition] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        type_, name = item.get("type"), item.get("name")
        if type_ in TYPES and isinstance(name, str) and name:
            cond = GateCondition(type_, name)
            if cond not in out:
                out.append(cond)
    return tuple(out)


def condition_met(cond: GateCondition, status: Mapping[str, Any] | None) -> bool:
    """Whether ``cond`` holds for its object's status (``None``: no such object)."""
    if status is None:
        return False
    if cond.type == "Barrier":
        return status.get("open") is True
    if cond.type == "Once":
        return status.get("state") == "Done"
    conditions = status.get("conditions")
    return isinstance(conditions, list) and any(
        isinstance(c, dict) and c.get("type") == "Complete" and c.get("status") == "True"
        for c in conditions
    )


def describe(cond: GateCondition, status: Mapping[str, Any] | None) -> str:
    """What ``cond`` waits for and where its object stands, for messages."""
    if cond.type == "Barrier":
        want = f"barrier {cond.name!r} open"
        if status is None:
            return f"{want} (it does not exist)"
        if status.get("open") is True:
            return f"{want} (open)"
        return f"{want} ({status.get('arrivedCount', 0)} arrived)"
    if cond.type == "Once":
        want = f"once {cond.name!r} done"
        if status is None:
            return f"{want} (it does not exist)"
        return f"{want} (state {status.get('state') or 'not started'})"
    want = f"job {cond.name!r} complete"
    if status is None:
        return f"{want} (it does not exist)"
    types = [
        str(c.get("type"))
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("status") == "True"
    ]
    return f"{want} ({', '.join(types) if types else 'running'})"


def is_open(gate_status: Mapping[str, Any], met: Iterable[bool]) -> bool:
    """The gate is open when its flag is set or it has conditions and all are met."""
    met = list(met)
    return gate_status.get("open") is True or (bool(met) and all(met))


def set_open(status: Mapping[str, Any], open_: bool, identity: str, wall: str) -> JSON | None:
    """Set the manual flag; ``None`` if it already has that value (idempotent)."""
    if "open" in status and (status.get("open") is True) == open_:
        return None
    new = copy.deepcopy(dict(status))
    new["open"] = open_
    new["openedAt" if open_ else "closedAt"] = wall
    new["changedBy"] = identity
    return new


def initial(status: Mapping[str, Any]) -> JSON | None:
    """A freshly created gate's status: closed. ``None`` once the flag is set."""
    if "open" in status:
        return None
    return {**copy.deepcopy(dict(status)), "open": False}
