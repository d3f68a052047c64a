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

from konductor._store._crd import crd as crd
from konductor._store._crd import (
    crds as crds,  # re-exported: the CLI and manifests import them here
)
from konductor._store._kinds import CUSTOM_KINDS, GROUP

JSON = dict[str, Any]

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
