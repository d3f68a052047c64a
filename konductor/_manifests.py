"""The Kubernetes manifests konductor needs: CRDs and a minimal RBAC Role.

They are built here from the same kind definitions the store uses, so the
shipped YAML can never drift from the code. ``kubectl get semaphores`` shows
permits / in use / waiting through the printer columns.

The schemas describe spec and status exactly (types, required fields, ranges,
list and string bounds from :mod:`konductor._limits`), so the API server itself
refuses a malformed write from kubectl or any client with 422 Invalid; the
memory and local stores apply the same schemas (:mod:`konductor._store._schema`).
Objects keep ``x-kubernetes-preserve-unknown-fields``: a field added by a newer
konductor is kept, never pruned (v1.20 has no way to reject unknown fields).
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

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


#: Each verb the runtime Role grants, and what uses it (docs/rbac.md has the same table).
RUNTIME_VERBS: dict[str, str] = {
    "get": "read an object (Store.get): every primitive, before deciding",
    "list": "the version to watch from when an object does not exist yet (Store.list)",
    "watch": "wait for changes instead of polling (Store.watch)",
    "create": "create a primitive's object on first use (Store.create)",
    "update": "write state by compare-and-swap: status of konductor kinds, spec of a Lease",
    "patch": "write a queue's status by guarded JSON Patch (semaphore, mutex, rwmutex): "
    "queueing and handing on grants without conflicts when many processes contend",
}

#: What the optional admin Role adds, for people and the CLI's admin commands.
ADMIN_VERBS: dict[str, str] = {
    "update": "change a spec: `konductor semaphore set-permits` (as `kubectl edit` does)",
    "delete": "delete or reset an object: `konductor semaphore delete`, `konductor delete`",
}

_LABELS = {"app.kubernetes.io/part-of": "konductor"}


def _plurals() -> list[str]:
    return [k.plural for k in CUSTOM_KINDS]


def runtime_rules() -> list[JSON]:
    """The runtime Role's rules: exactly the verbs konductor's primitives use."""
    plurals = _plurals()
    return [
        {"apiGroups": [GROUP], "resources": plurals, "verbs": ["get", "list", "watch", "create"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{p}/status" for p in plurals],
            "verbs": ["update", "patch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update"],
        },
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
        # Kubernetes Events for rare transitions (a lost grant, a takeover, a
        # leadership change, a failed once); without it they are skipped.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def admin_rules() -> list[JSON]:
    """The admin Role's rules: what the runtime Role lacks for admin commands."""
    return [
        {"apiGroups": [GROUP], "resources": _plurals(), "verbs": ["update", "delete"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["delete"]},
    ]


def rbac(namespace: str = "default", service_account: str = "konductor") -> list[JSON]:
    """A namespaced Role with exactly what konductor uses, bound to a service account.

    Three documents: the ServiceAccount, the Role ``konductor`` (see
    :data:`RUNTIME_VERBS`) and its RoleBinding. Admin commands (delete, set
    permits) need :func:`admin_rbac` as well.
    """
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace, "labels": _LABELS},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "konductor", "namespace": namespace, "labels": _LABELS},
            "rules": runtime_rules(),
        },
        _binding("konductor", namespace, service_account),
    ]


def admin_rbac(namespace: str = "default", service_account: str | None = None) -> list[JSON]:
    """The optional Role ``konductor-admin`` (see :data:`ADMIN_VERBS`), for operators.

    It adds to the runtime Role what admin commands need: ``update`` of a
    spec and ``delete``. Bind it to people or to a maintenance job, not to
    the application; with ``service_account`` a RoleBinding to it is included.
    """
    docs: list[JSON] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "konductor-admin", "namespace": namespace, "labels": _LABELS},
            "rules": admin_rules(),
        }
    ]
    if service_account is not None:
        docs.append(_binding("konductor-admin", namespace, service_account))
    return docs


def _binding(role: str, namespace: str, service_account: str) -> JSON:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": role, "namespace": namespace, "labels": _LABELS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }


def to_yaml(documents: list[JSON]) -> str:
    """Documents as one multi-document YAML stream, for ``kubectl apply -f -``."""
    return yaml.safe_dump_all(documents, sort_keys=False)


async def install_crds(store: Any, *, timeout: float = 60.0) -> list[str]:
    """Create or update every konductor CRD and wait until the API server serves them.

    ``store`` is a :class:`KubernetesStore` whose credentials may manage CRDs
    (cluster-admin, typically). Returns the names of the CRDs.

    Raises:
        Forbidden: the credentials may not manage CustomResourceDefinitions.
        TimeoutError: a CRD was not Established within ``timeout`` seconds.
    """
    from konductor._errors import AlreadyExists
    from konductor._kube._api import Target

    api = await store._connect()
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for manifest in crds():
        name = manifest["metadata"]["name"]
        names.append(name)
        target = Target(
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            "CustomResourceDefinition",
            None,
            name,
            custom=False,
        )
        try:
            await api.request("POST", base, target, body=manifest)
        except AlreadyExists:
            current = await api.request("GET", f"{base}/{name}", target)
            manifest = {
                **manifest,
                "metadata": {
                    **manifest["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            }
            await api.request("PUT", f"{base}/{name}", target, body=manifest)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in names:
        target = Target(
            "get",
            "customresourcedefinitions.apiextensions.k8s.io",
            "CustomResourceDefinition",
            None,
            name,
            custom=False,
        )
        while True:
            current = await api.request("GET", f"{base}/{name}", target)
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            ):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"CRD {name} was not Established within {timeout}s")
            await asyncio.sleep(0.1)
    return names
