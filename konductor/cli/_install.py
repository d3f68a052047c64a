"""``konductor install`` (apply CRDs + RBAC) and ``konductor manifests`` (print them).

``install`` talks to the cluster with the caller's credentials: the CRDs are
cluster-scoped (cluster-admin, in practice); the ServiceAccount, Role and
RoleBinding go into the namespace. It is idempotent: running it again
reports each object as unchanged, or updates it to this version's definition.
An existing ServiceAccount is never modified (it may be your application's).
"""

from __future__ import annotations

from typing import Any

from konductor._errors import AlreadyExists
from konductor._kube import _config as kube
from konductor._kube._api import KubeApi, Target
from konductor._manifests import crds, install_crds, rbac
from konductor._manifests import to_yaml as manifests_yaml
from konductor._store._kubernetes import KubernetesStore
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_OK, JSON, Session, UsageError, duration, table

_PATHS = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", ""),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", "rbac.authorization.k8s.io"),
    "RoleBinding": (
        "/apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        "rbac.authorization.k8s.io",
    ),
}
#: The fields of each kind that ``install`` keeps equal to the manifest.
_CONTENT = {"ServiceAccount": (), "Role": ("rules",), "RoleBinding": ("roleRef", "subjects")}


def register(groups: opt.SubParsers, parent: object) -> None:
    p = opt.leaf(
        groups,
        "install",
        install,
        parent,
        "apply konductor's CRDs (cluster-wide) and RBAC (in the namespace)",
        "Creates or updates the CustomResourceDefinitions (needs cluster-admin) and waits "
        "until the API server serves them, then the ServiceAccount, Role and RoleBinding "
        "konductor needs in the namespace. Idempotent. To review or apply them with "
        "kubectl / GitOps instead, use `konductor manifests`.",
    )
    p.add_argument("--no-crds", action="store_true", help="skip the CRDs (RBAC only)")
    p.add_argument("--no-rbac", action="store_true", help="skip the RBAC (CRDs only)")
    _service_account(p)
    p.add_argument(
        "--timeout",
        type=duration,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the CRDs to be served (default 60); exit 3 after it",
    )

    p = opt.leaf(
        groups,
        "manifests",
        manifests,
        parent,
        "print the CRDs (default) and/or RBAC as YAML for kubectl apply / GitOps",
        "Prints konductor's manifests, rendered from the code (never out of date):\n"
        "  konductor manifests | kubectl apply -f -                     # the CRDs\n"
        "  konductor manifests --rbac -n NAMESPACE | kubectl apply -f -  # the RBAC\n"
        "-o json prints one v1 List instead of a YAML stream.",
        raw=True,
    )
    p.add_argument("--crds", action="store_true", help="print the CRDs (the default)")
    p.add_argument("--rbac", action="store_true", help="print the RBAC for the namespace")
    _service_account(p)


def _service_account(p: Any) -> None:
    p.add_argument(
        "--service-account",
        default="konductor",
        metavar="NAME",
        help="the ServiceAccount the RoleBinding grants (default konductor)",
    )


def manifest_namespace(s: Session) -> str:
    """The namespace the RBAC is rendered for: as a client would resolve it, without a store."""
    from konductor._config import _env_namespace

    a = s.args
    ns = _env_namespace(getattr(a, "namespace", None))
    if ns:
        return ns
    if kube.in_cluster():
        return kube.service_account_namespace() or "default"
    path = getattr(a, "kubeconfig", None) or kube.default_kubeconfig_path()
    if path:
        return kube.kubeconfig_namespace(path, getattr(a, "context", None)) or "default"
    return "default"


async def manifests(s: Session) -> int:
    a = s.args
    docs: list[JSON] = []
    if a.crds or not a.rbac:
        docs += crds()
    if a.rbac:
        docs += rbac(manifest_namespace(s), a.service_account)
    if s.output == "json":
        s.emit({"apiVersion": "v1", "kind": "List", "items": docs}, str)
    else:
        print(manifests_yaml(docs), end="", file=s.out, flush=True)
    return EXIT_OK


async def _apply(api: KubeApi, namespace: str, doc: JSON) -> str:
    """Create ``doc``, or bring an existing one's content in line; the action taken."""
    kind = doc["kind"]
    name = doc["metadata"]["name"]
    prefix, plural, group = _PATHS[kind]
    resource = f"{plural}.{group}" if group else plural
    collection = f"{prefix}/namespaces/{namespace}/{plural}"

    def target(verb: str) -> Target:
        return Target(verb, resource, kind, namespace, name, custom=False)

    try:
        await api.request("POST", collection, target("create"), body=doc)
        return "created"
    except AlreadyExists:
        pass
    current = await api.request("GET", f"{collection}/{name}", target("get"))
    keys = _CONTENT[kind]
    if all(current.get(k) == doc.get(k) for k in keys):
        return "unchanged"
    meta = current.get("metadata") or {}
    body = {
        **doc,
        "metadata": {
            **doc["metadata"],
            "labels": {**(meta.get("labels") or {}), **doc["metadata"].get("labels", {})},
            "resourceVersion": meta.get("resourceVersion"),
        },
    }
    await api.request("PUT", f"{collection}/{name}", target("update"), body=body)
    return "configured"


async def install(s: Session) -> int:
    a = s.args
    if a.no_crds and a.no_rbac:
        raise UsageError("--no-crds and --no-rbac together leave nothing to install")
    store = s.store()
    if not isinstance(store, KubernetesStore):
        raise UsageError(
            f"install applies konductor's CRDs and RBAC to a Kubernetes cluster; the "
            f"{type(store).__name__} needs no installation"
        )
    results: list[JSON] = []
    if not a.no_crds:
        for name in await s.guard(install_crds(store, timeout=a.timeout)):
            results.append(
                {"kind": "CustomResourceDefinition", "name": name, "action": "established"}
            )
    if not a.no_rbac:
        api = await store._connect()
        for doc in rbac(store.namespace, a.service_account):
            action = await s.guard(_apply(api, store.namespace, doc))
            results.append(
                {
                    "kind": doc["kind"],
                    "name": doc["metadata"]["name"],
                    "namespace": store.namespace,
                    "action": action,
                }
            )

    def render() -> str:
        rows = [[r["kind"], r["name"], r.get("namespace", ""), r["action"]] for r in results]
        return table(["KIND", "NAME", "NAMESPACE", "RESULT"], rows)

    s.emit({"namespace": store.namespace, "applied": results}, render)
    return EXIT_OK
