"""The CustomResourceDefinitions of the konductor kinds: their schemas and columns.

It lives beside the store because the store's schema check
(:mod:`konductor._store._schema`, used by the memory and local stores) holds
every write to these same schemas, as the API server does; the manifests
module (:mod:`konductor._manifests`) ships them with the RBAC Roles.
"""

from __future__ import annotations

from typing import Any

from konductor import _limits as limits
from konductor._store._kinds import CUSTOM_KINDS, GROUP, VERSION, Kind

JSON = dict[str, Any]


def _int(minimum: int, description: str, maximum: int | None = None) -> JSON:
    schema: JSON = {"type": "integer", "minimum": minimum, "description": description}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _str(max_length: int, description: str, *, min_length: int = 0) -> JSON:
    schema: JSON = {"type": "string", "maxLength": max_length, "description": description}
    if min_length:
        schema["minLength"] = min_length
    return schema


def _time(description: str) -> JSON:
    return _str(limits.MAX_TIME, description)


def _number(maximum: float, description: str) -> JSON:
    return {"type": "number", "minimum": 0, "maximum": maximum, "description": description}


def _object(properties: JSON, required: list[str] | None = None, description: str = "") -> JSON:
    schema: JSON = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def _array(items: JSON, max_items: int, description: str) -> JSON:
    return {"type": "array", "maxItems": max_items, "items": items, "description": description}


def _nullable(schema: JSON) -> JSON:
    return {**schema, "nullable": True}


_TOKEN = _int(1, "A fencing token.", limits.MAX_TOKEN)
_COUNTER = _int(0, "A counter.", limits.MAX_TOKEN)
_TTL: JSON = {
    "type": "number",
    "minimum": 0,
    "exclusiveMinimum": True,
    "maximum": limits.MAX_TTL,
    "description": "Seconds an observer waits, seeing the entry unchanged, before it is stale.",
}
_ID = _str(limits.MAX_ID, "Identifies the entry across retries.", min_length=1)
_IDENTITY = _str(limits.MAX_IDENTITY, "The identity of the process that wrote the entry.")


def _slot(*, holder: bool) -> JSON:
    """A holder entry (with its fencing token) or a queue ticket."""
    properties: JSON = {
        "id": _ID,
        "holder": _IDENTITY,
        "count": _int(1, "Permits held or wanted.", limits.MAX_PERMITS),
        "mode": {"type": "string", "enum": ["exclusive", "read", "write"]},
        "ttlSeconds": _TTL,
        "renewals": _COUNTER,
        "renewedAt": _time("When the owner last renewed (its own clock; for people)."),
        "token": _TOKEN,
        "priority": {
            "type": "integer",
            "minimum": limits.MIN_PRIORITY,
            "maximum": limits.MAX_PRIORITY,
            "description": "Higher is served sooner; queued tickets age (see docs/semaphore.md).",
        },
        "queuedAt": _int(
            0, "nextToken when the ticket queued: the origin of its age.", limits.MAX_TOKEN
        ),
    }
    required = ["id", "holder", "count", "mode", "ttlSeconds", "renewals", "renewedAt"]
    return _object(properties, [*required, "token"] if holder else required)


_QUEUED_STATUS: JSON = {
    "holders": _array(_slot(holder=True), limits.MAX_HOLDERS, "Granted entries."),
    "queue": _array(
        _slot(holder=False), limits.MAX_QUEUE, "Waiters, by priority then first come first served."
    ),
    "nextToken": _TOKEN,
    "inUse": _int(0, "Permits in use (derived).", limits.MAX_PERMITS),
    "readers": _int(0, "Readers holding (derived).", limits.MAX_HOLDERS),
    "waiting": _int(0, "Waiters queued (derived).", limits.MAX_QUEUE),
    "holder": _nullable(_IDENTITY),
    "writer": _nullable(_IDENTITY),
}

_STATUS_PROPERTIES: dict[str, JSON] = {
    "Semaphore": _QUEUED_STATUS,
    "Mutex": _QUEUED_STATUS,
    "RWMutex": _QUEUED_STATUS,
    "Barrier": {
        "arrived": _array(
            _object(
                {
                    "identity": _str(limits.MAX_IDENTITY, "The party.", min_length=1),
                    "arrivedAt": _time("When it arrived."),
                },
                ["identity"],
            ),
            limits.MAX_PARTIES,
            "The parties that arrived, in arrival order.",
        ),
        "arrivedCount": _int(0, "len(arrived) (derived).", limits.MAX_PARTIES),
        "open": {"type": "boolean"},
        "openedAt": _time("When it opened."),
    },
    "Gate": {
        "open": {"type": "boolean"},
        "openedAt": _time("When it was last opened."),
        "closedAt": _time("When it was last closed."),
        "changedBy": _IDENTITY,
    },
    "Once": {
        "state": {"type": "string", "enum": ["Pending", "Running", "Done", "Failed"]},
        "attempt": _COUNTER,
        "run": _object(
            {
                "id": _ID,
                "holder": _IDENTITY,
                "attempt": _TOKEN,
                "ttlSeconds": _TTL,
                "renewals": _COUNTER,
                "renewedAt": _time("When the runner last renewed."),
            },
            ["id", "holder", "attempt", "ttlSeconds", "renewals"],
            "The runner's claim while Running.",
        ),
        "runner": _IDENTITY,
        "error": _str(limits.MAX_ERROR, "What the last failed run raised."),
        "startedAt": _time("When the current or last run started."),
        "doneAt": _time("When it completed."),
        "failedAt": _time("When the last run failed."),
    },
    "RateLimit": {
        "members": _array(
            _object(
                {
                    "id": _ID,
                    "holder": _IDENTITY,
                    "share": _number(limits.MAX_RATE, "Tokens per second the member may spend."),
                    "demand": _number(limits.MAX_RATE, "Tokens per second it reported needing."),
                    "ttlSeconds": _TTL,
                    "renewals": _COUNTER,
                    "renewedAt": _time("When the member last wrote its entry (for people)."),
                },
                ["id", "holder", "share", "demand", "ttlSeconds", "renewals"],
            ),
            limits.MAX_MEMBERS,
            "The live members and their shares; the shares never sum above spec.rate.",
        ),
        "allocated": _number(limits.MAX_RATE * limits.MAX_MEMBERS, "Sum of the shares (derived)."),
        "memberCount": _int(0, "len(members) (derived).", limits.MAX_MEMBERS),
    },
    "WaitGroup": {
        "count": _int(0, "Outstanding work.", limits.MAX_TOKEN),
        "drains": _COUNTER,
        "ops": _array(_str(limits.MAX_ID, "An add's id."), limits.MAX_OPS, "Recent adds."),
    },
}

_SPEC_PROPERTIES: dict[str, tuple[JSON, list[str]]] = {
    "Semaphore": (
        {
            "permits": _int(
                1, "How many holders may hold the semaphore at once.", limits.MAX_PERMITS
            )
        },
        ["permits"],
    ),
    "Barrier": (
        {
            "expected": _int(
                1, "How many distinct parties must arrive to open the barrier.", limits.MAX_PARTIES
            )
        },
        ["expected"],
    ),
    "Gate": (
        {
            "conditions": {
                "type": "array",
                "description": "Conditions that open the gate when all are met.",
                "maxItems": limits.MAX_CONDITIONS,
                "items": {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {
                        "type": {"type": "string", "enum": ["Barrier", "Once", "Job"]},
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": limits.MAX_IDENTITY,
                        },
                    },
                },
            }
        },
        [],
    ),
    "Mutex": ({}, []),
    "RWMutex": ({}, []),
    "Once": ({}, []),
    "WaitGroup": ({}, []),
    "RateLimit": (
        {
            "rate": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": limits.MAX_RATE,
                "description": "Tokens per second, cluster-wide (kubectl edit applies it live).",
            },
            "burst": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": limits.MAX_BURST,
                "description": "Tokens the members' buckets hold in all (default: one second "
                "of the rate, at least 1).",
            },
        },
        ["rate"],
    ),
}

_COLUMNS: dict[str, list[JSON]] = {
    "Semaphore": [
        {"name": "Permits", "type": "integer", "jsonPath": ".spec.permits"},
        {"name": "In-Use", "type": "integer", "jsonPath": ".status.inUse"},
        {"name": "Waiting", "type": "integer", "jsonPath": ".status.waiting"},
    ],
    "Barrier": [
        {"name": "Expected", "type": "integer", "jsonPath": ".spec.expected"},
        {"name": "Arrived", "type": "integer", "jsonPath": ".status.arrivedCount"},
        {"name": "Open", "type": "boolean", "jsonPath": ".status.open"},
    ],
    "Gate": [{"name": "Open", "type": "boolean", "jsonPath": ".status.open"}],
    "Mutex": [
        {"name": "Holder", "type": "string", "jsonPath": ".status.holder"},
        {"name": "Waiting", "type": "integer", "jsonPath": ".status.waiting"},
    ],
    "RWMutex": [
        {"name": "Writer", "type": "string", "jsonPath": ".status.writer"},
        {"name": "Readers", "type": "integer", "jsonPath": ".status.readers"},
        {"name": "Waiting", "type": "integer", "jsonPath": ".status.waiting"},
    ],
    "Once": [
        {"name": "State", "type": "string", "jsonPath": ".status.state"},
        {"name": "Runner", "type": "string", "jsonPath": ".status.runner"},
    ],
    "WaitGroup": [{"name": "Count", "type": "integer", "jsonPath": ".status.count"}],
    "RateLimit": [
        {"name": "Rate", "type": "number", "jsonPath": ".spec.rate"},
        {"name": "Members", "type": "integer", "jsonPath": ".status.memberCount"},
        {"name": "Allocated", "type": "number", "jsonPath": ".status.allocated"},
    ],
}


def crd(kind: Kind) -> JSON:
    """The CustomResourceDefinition for one konductor kind."""
    properties, required = _SPEC_PROPERTIES[kind.kind]
    spec_schema: JSON = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": properties,
    }
    if required:
        spec_schema["required"] = required
    columns = [
        *_COLUMNS[kind.kind],
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.resource,
            "labels": {"app.kubernetes.io/part-of": "konductor"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["konductor"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"konductor {kind.kind}: a cluster-wide coordination "
                            "primitive.",
                            "properties": {
                                "spec": spec_schema,
                                "status": _object(_STATUS_PROPERTIES[kind.kind]),
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[JSON]:
    """Every konductor CRD."""
    return [crd(kind) for kind in CUSTOM_KINDS]
