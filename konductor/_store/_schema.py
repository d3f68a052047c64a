"""Spec and status validation for the in-process stores, from the CRDs' own schemas.

The API server rejects a write that violates a CRD's openAPIV3Schema with 422
Invalid naming the field. The memory and local stores apply the very same
schema (the subset konductor's CRDs use: type, nullable, minimum, maximum,
exclusiveMinimum, required, enum, minLength, maxLength, maxItems, properties,
items), read from :func:`konductor._manifests.crd`, never a hand copy, so that
a malformed write is refused on every store and a user's tests on the memory
store fail the way production would.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from konductor._errors import Invalid
from konductor._store._crd import crd
from konductor._store._kinds import Kind

_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _check(value: Any, schema: Mapping[str, Any], path: str, out: list[tuple[str, str]]) -> None:
    if value is None and schema.get("nullable"):
        return
    expected = schema.get("type")
    if expected is not None:
        ok = isinstance(value, _TYPES[expected])
        if expected in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            out.append((path, f"Invalid value: must be of type {expected}"))
            return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        out.append((path, f"Unsupported value: {value!r}: supported values: {allowed}"))
    if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
        out.append((path, f"Invalid value: {value}: should be greater than {schema['minimum']}"))
    elif "minimum" in schema and value < schema["minimum"]:
        out.append(
            (
                path,
                f"Invalid value: {value}: should be greater than or equal to {schema['minimum']}",
            )
        )
    if "maximum" in schema and value > schema["maximum"]:
        out.append(
            (path, f"Invalid value: {value}: should be less than or equal to {schema['maximum']}")
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append((path, f"Invalid value: should be at least {schema['minLength']} chars long"))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append((path, f"Too long: may not be longer than {schema['maxLength']}"))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append((path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
    if isinstance(value, dict):
        for req in schema.get("required", ()):
            if req not in value:
                out.append((f"{path}.{req}", "Required value"))
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                _check(value[key], sub, f"{path}.{key}", out)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", out)


@functools.cache
def _schema_of(kind: Kind, part: str) -> Mapping[str, Any]:
    root = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema: Mapping[str, Any] = root["properties"][part]
    return schema


def _validate(kind: Kind, name: str, part: str, value: Mapping[str, Any]) -> None:
    if kind.builtin:
        return
    problems: list[tuple[str, str]] = []
    _check(dict(value), _schema_of(kind, part), part, problems)
    if problems:
        detail = "; ".join(f"{field}: {msg}" for field, msg in problems)
        raise Invalid(
            f"{kind} {name!r} is invalid: {detail}",
            fields=tuple(field for field, _ in problems),
            reason="Invalid",
        )


def validate_spec(kind: Kind, name: str, spec: Mapping[str, Any]) -> None:
    """Raise :class:`Invalid` naming each field of ``spec`` that the kind's CRD rejects."""
    _validate(kind, name, "spec", spec)


def validate_status(kind: Kind, name: str, status: Mapping[str, Any]) -> None:
    """Raise :class:`Invalid` naming each field of ``status`` that the kind's CRD rejects."""
    _validate(kind, name, "status", status)
