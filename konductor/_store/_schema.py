"""Spec validation for the in-process stores, from the same schema as the CRDs.

The API server rejects a spec that violates a CRD's openAPIV3Schema with 422
Invalid naming the field. The memory and local stores apply the same schema
(the subset konductor's CRDs use: type, minimum, maximum, required, enum,
minLength, properties, items) so that a user's tests on the memory store fail
the way production would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from konductor._errors import Invalid
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
    if "minimum" in schema and value < schema["minimum"]:
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


def validate_spec(kind: Kind, name: str, spec: Mapping[str, Any]) -> None:
    """Raise :class:`Invalid` naming each field of ``spec`` that the kind's CRD rejects."""
    if kind.builtin:
        return
    from konductor._manifests import crd

    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    problems: list[tuple[str, str]] = []
    _check(dict(spec), schema, "spec", problems)
    if problems:
        detail = "; ".join(f"{field}: {msg}" for field, msg in problems)
        raise Invalid(
            f"{kind} {name!r} is invalid: {detail}",
            fields=tuple(field for field, _ in problems),
            reason="Invalid",
        )
