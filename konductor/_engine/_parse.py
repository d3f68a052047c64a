"""Parsing stored state at the edge: raw JSON in, typed values out, or CorruptState.

Anyone holding konductor's Role can write an object's status, and operators
``kubectl edit`` objects by hand, so what a store returns is untrusted. Each
``*_state`` module parses the raw status (and spec) once with these helpers
into typed values and runs its transitions on those. A field that does not
parse is never guessed at: the whole object is refused with
:class:`~konductor.CorruptState`, which names the object, the field and the
repair. Fail closed: a semaphore whose holders cannot be read admits nobody.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from konductor._errors import CorruptState
from konductor._store._kinds import Kind


@dataclass(frozen=True)
class Where:
    """Which object a parse is about, for the error message (``None``: unknown)."""

    kind: Kind
    name: str | None = None
    namespace: str | None = None


def repair_hint(where: Where, field: str) -> str:
    """How a person repairs ``field`` of the object."""
    kind, name = where.kind, where.name or "NAME"
    ns = f" -n {where.namespace}" if where.namespace else ""
    delete = (
        f"`konductor delete {kind.kind.lower()} {name}` "
        f"(or `kubectl delete {kind.resource} {name}{ns}`)"
    )
    if field.startswith("spec.") or not kind.has_status:
        return (
            f"fix it with `kubectl edit {kind.resource} {name}{ns}`, or delete the object with "
            f"{delete}"
        )
    return (
        f"repair it in place with `konductor repair {kind.kind.lower()} {name}{ns}` (it drops "
        "the entries that do not parse and keeps the rest, tokens included), or, as status "
        "is written only through the status subresource, which `kubectl edit` cannot change "
        f"on every cluster version, delete the object with {delete}; its holders and waiters "
        "lose their place and the next caller recreates it"
    )


def corrupt(where: Where, field: str, problem: str) -> CorruptState:
    """The error for ``field`` of the object not parsing; ``problem`` says how."""
    who = f"{where.kind.kind} {where.name!r}" if where.name else f"a {where.kind.kind}"
    if where.namespace:
        who += f" in namespace {where.namespace!r}"
    return CorruptState(
        f"{who} has corrupt state at {field}: {problem}; konductor refuses to act on it "
        f"until it is repaired: {repair_hint(where, field)}",
        kind=where.kind.kind,
        name=where.name or "",
        namespace=where.namespace or "",
        field=field,
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(
    where: Where, field: str, value: Any, *, minimum: int, maximum: int | None = None
) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise corrupt(where, field, f"must be an integer, got {_shown(value)}")
    if value < minimum:
        raise corrupt(where, field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise corrupt(where, field, f"must be at most {maximum}, got {value}")
    return value


def number(where: Where, field: str, value: Any, *, above: float, maximum: float) -> float:
    """``value`` as a finite float in ``(above, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise corrupt(where, field, f"must be a number, got {_shown(value)}")
    result = float(value)
    if not math.isfinite(result) or result <= above or result > maximum:
        raise corrupt(
            where, field, f"must be more than {above:g} and at most {maximum:g}, got {value}"
        )
    return result


def string(where: Where, field: str, value: Any, *, max_length: int, min_length: int = 0) -> str:
    """``value`` as a str of bounded length."""
    if not isinstance(value, str):
        raise corrupt(where, field, f"must be a string, got {_shown(value)}")
    if not min_length <= len(value) <= max_length:
        raise corrupt(
            where,
            field,
            f"must be {min_length} to {max_length} characters long, got {len(value)}",
        )
    return value


def choice(where: Where, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise corrupt(where, field, f"must be one of {', '.join(allowed)}, got {_shown(value)}")
    return value


def mapping(where: Where, field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise corrupt(where, field, f"must be an object, got {_shown(value)}")
    return value


def array(where: Where, field: str, value: Any, *, max_items: int) -> list[Any]:
    """``value`` as a list (absent or ``None``: empty) of at most ``max_items``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise corrupt(where, field, f"must be a list, got {_shown(value)}")
    if len(value) > max_items:
        raise corrupt(where, field, f"must have at most {max_items} items, got {len(value)}")
    return value


def required(where: Where, field: str, raw: Mapping[str, Any], key: str) -> Any:
    if key not in raw:
        raise corrupt(where, f"{field}.{key}", "is required but missing")
    return raw[key]
