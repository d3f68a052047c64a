"""``konductor install`` (apply CRDs + RBAC), ``uninstall`` (remove them), ``manifests`` (print).

``install`` talks to the cluster with the caller's credentials: the CRDs are
cluster-scoped (cluster-admin, in practice); the ServiceAccount, Role and
RoleBinding go into the namespace. It is idempotent: running it again
reports each object as unchanged, or updates it to this version's definition.
An existing ServiceAccount is never modified (it may be your application's).

``uninstall`` is install's reverse, after a confirmation: the RBAC objects
install renders (only those labelled ``app.kubernetes.io/part-of:
konductor``, so a ServiceAccount that was yours before is kept) and the CRDs,
which deletes every konductor object of every namespace with them. Leases are
built-in objects and stay.
"""

from __future__ import annotations

from typing import Any

from konductor._errors import AlreadyExists, CRDNotInstalled, NotFound
from konductor._kube import _config as kube
from konductor._kube._api import KubeApi, Target
from konductor._manifests import crds, install_crds, rbac
from konductor._manifests import to_yaml as manifests_yaml
from konductor._store._kinds import CUSTOM_KINDS
from konductor._store._kubernetes import KubernetesStore
from konductor.cli import _options as opt
from konductor.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    JSON,
    Session,
    UsageError,
    confirm,
    duration,
    table,
)

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
        "uninstall",
        uninstall,
        parent,
        "remove konductor's RBAC (in the namespace) and CRDs (cluster-wide, with every object)",
        "Deletes the Role, RoleBinding and ServiceAccount `install` created in the namespace "
        "(only objects labelled app.kubernetes.io/part-of=konductor: a ServiceAccount that "
        "existed before is kept), then the CustomResourceDefinitions, which deletes every "
        "konductor object in every namespace (Leases are built-in and stay). Shows what "
        "will go and asks first; --yes for scripts. Needs cluster-admin for the CRDs.",
    )
    p.add_argument("--no-crds", action="store_true", help="keep the CRDs (RBAC only)")
    p.add_argument("--no-rbac", action="store_true", help="keep the RBAC (CRDs only)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _service_account(p)
    p.add_argument(
        "--timeout",
        type=duration,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the CRDs to be gone (default 60); exit 3 after it",
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


_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _crd_target(verb: str, name: str) -> Target:
    return Target(
        verb,
        "customresourcedefinitions.apiextensions.k8s.io",
        "CustomResourceDefinition",
        None,
        name,
        custom=False,
    )


async def _objects_everywhere(api: KubeApi) -> dict[str, int]:
    """How many objects of each konductor kind exist, in all namespaces (kinds not installed: 0)."""
    counts = {}
    for kind in CUSTOM_KINDS:
        target = Target("list", kind.resource, kind.kind, None, None, custom=True)
        try:
            listed = await api.request("GET", f"/apis/{kind.api_version}/{kind.plural}", target)
        except (NotFound, CRDNotInstalled):
            counts[kind.plural] = 0
            continue
        counts[kind.plural] = len(listed.get("items") or [])
    return counts


async def _ours(api: KubeApi, namespace: str, doc: JSON) -> bool:
    """Whether the object ``doc`` names exists and carries konductor's part-of label."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    prefix, plural, group = _PATHS[kind]
    resource = f"{plural}.{group}" if group else plural
    target = Target("get", resource, kind, namespace, name, custom=False)
    try:
        current = await api.request(
            "GET", f"{prefix}/namespaces/{namespace}/{plural}/{name}", target
        )
    except NotFound:
        return False
    labels = (current.get("metadata") or {}).get("labels") or {}
    return bool(labels.get("app.kubernetes.io/part-of") == "konductor")


async def uninstall(s: Session) -> int:
    a = s.args
    if a.no_crds and a.no_rbac:
        raise UsageError("--no-crds and --no-rbac together leave nothing to uninstall")
    store = s.store()
    if not isinstance(store, KubernetesStore):
        raise UsageError(
            f"uninstall removes konductor's CRDs and RBAC from a Kubernetes cluster; the "
            f"{type(store).__name__} has nothing installed"
        )
    api = await store._connect()
    ns = store.namespace
    rbac_docs = []
    if not a.no_rbac:
        for doc in rbac(ns, a.service_account):
            if doc["kind"] in _PATHS and await s.guard(_ours(api, ns, doc)):
                rbac_docs.append(doc)
    counts = {} if a.no_crds else await s.guard(_objects_everywhere(api))
    plan = [f"{d['kind']} {ns}/{d['metadata']['name']}" for d in rbac_docs]
    if not a.no_crds:
        total = sum(counts.values())
        detail = ", ".join(f"{n} {plural}" for plural, n in counts.items() if n) or "none"
        plan.append(
            f"the {len(CUSTOM_KINDS)} konductor CRDs, and with them {total} konductor "
            f"object(s) in all namespaces ({detail})"
        )
    if not a.yes:
        summary = "; ".join(plan) or "nothing"
        if not s.interactive:
            raise UsageError(
                f"not uninstalling ({summary}): stdin is not a terminal, pass --yes to confirm"
            )
        s.say("konductor uninstall will delete:\n  " + "\n  ".join(plan))
        if not await s.guard(confirm(s, "delete all of this? [y/N] ")):
            s.say("nothing was deleted")
            return EXIT_ERROR
    results: list[JSON] = []
    for doc in rbac_docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        prefix, plural, group = _PATHS[kind]
        resource = f"{plural}.{group}" if group else plural
        target = Target("delete", resource, kind, ns, name, custom=False)
        try:
            await s.guard(
                api.request("DELETE", f"{prefix}/namespaces/{ns}/{plural}/{name}", target)
            )
            results.append({"kind": kind, "name": name, "namespace": ns, "action": "deleted"})
        except NotFound:
            results.append({"kind": kind, "name": name, "namespace": ns, "action": "absent"})
    if not a.no_crds:
        names = [c["metadata"]["name"] for c in crds()]
        for name in names:
            try:
                await s.guard(api.request("DELETE", f"{_CRDS}/{name}", _crd_target("delete", name)))
                action = "deleted"
            except NotFound:
                action = "absent"
            results.append({"kind": "CustomResourceDefinition", "name": name, "action": action})
        await s.guard(_gone(api, names, a.timeout))

    def render() -> str:
        rows = [[r["kind"], r["name"], r.get("namespace", ""), r["action"]] for r in results]
        return table(["KIND", "NAME", "NAMESPACE", "RESULT"], rows)

    s.emit({"namespace": ns, "removed": results}, render)
    return EXIT_OK


async def _gone(api: KubeApi, names: list[str], timeout: float) -> None:
    """Wait until the API server no longer serves the CRDs (their objects are being removed)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in names:
        while True:
            try:
                await api.request("GET", f"{_CRDS}/{name}", _crd_target("get", name))
            except NotFound:
                break
            if loop.time() > deadline:
                raise TimeoutError(f"CRD {name} was still being deleted after {timeout:g}s")
            await asyncio.sleep(0.2)
