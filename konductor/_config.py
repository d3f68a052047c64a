"""Which store and namespace a client uses when the caller does not say.

Resolution is explicit and ordered so that nobody is misconfigured silently:

store
    ``store=`` argument -> ``KONDUCTOR_STORE`` (``kubernetes``, ``memory``,
    ``local`` or ``local:/path/to.db``) -> the pod's service account (in a
    cluster) -> a kubeconfig (``KUBECONFIG``, ``~/.kube/config``) -> an error
    that lists these options. A process inside a cluster is never given a
    non-Kubernetes store unless ``KONDUCTOR_STORE`` asks for one, and then a
    warning says that coordination is not cluster-wide.
namespace
    ``namespace=`` argument -> ``KONDUCTOR_NAMESPACE`` -> the service account's
    namespace -> the kubeconfig context's namespace -> ``default``.
"""

from __future__ import annotations

import logging
import os

from konductor._errors import ConfigurationError
from konductor._kube import _config as kube
from konductor._names import validate_namespace
from konductor._store._base import Store

log = logging.getLogger("konductor")

STORE_ENV = "KONDUCTOR_STORE"
NAMESPACE_ENV = "KONDUCTOR_NAMESPACE"
VALID_STORES = "kubernetes, memory, local, local:/path/to/konductor.db"


def _env_namespace(namespace: str | None) -> str | None:
    if namespace is not None:
        return validate_namespace(namespace)
    value = os.environ.get(NAMESPACE_ENV)
    return validate_namespace(value) if value else None


def store_from_spec(spec: str, namespace: str | None = None) -> Store:
    """A store from a ``KONDUCTOR_STORE``-style string.

    Raises:
        ConfigurationError: the string names no known store; the message lists
            the valid ones.
    """
    kind, _, path = spec.strip().partition(":")
    kind = kind.lower()
    ns = _env_namespace(namespace)
    if kind == "kubernetes" and not path:
        from konductor._store._kubernetes import KubernetesStore

        return KubernetesStore(ns, in_cluster=kube.in_cluster())
    if kind == "memory" and not path:
        from konductor._store._memory import MemoryStore

        return MemoryStore(ns or "default")
    if kind == "local":
        from konductor._store._local import LocalStore

        return LocalStore(os.path.expanduser(path) if path else None, namespace=ns or "default")
    raise ConfigurationError(
        f"{STORE_ENV}={spec!r} is not a store konductor knows; valid values: {VALID_STORES}"
    )


def resolve_store(namespace: str | None = None) -> Store:
    """The store for a client that was given none (see the module docstring).

    Raises:
        ConfigurationError: nothing is configured (the message lists the
            options), or ``KONDUCTOR_STORE`` is invalid.
        InvalidName: the namespace is not a valid namespace name.
    """
    spec = os.environ.get(STORE_ENV)
    inside = kube.in_cluster()
    if spec:
        store = store_from_spec(spec, namespace)
        if inside and not spec.strip().lower().startswith("kubernetes"):
            log.warning(
                "%s=%s inside a Kubernetes pod: coordination is NOT cluster-wide, only within "
                "this %s; unset it to use the Kubernetes API",
                STORE_ENV,
                spec,
                "process" if spec.startswith("memory") else "machine",
            )
        return store
    from konductor._store._kubernetes import KubernetesStore

    ns = _env_namespace(namespace)
    if inside:
        return KubernetesStore(ns, in_cluster=True)
    path = kube.default_kubeconfig_path()
    if path is not None:
        return KubernetesStore(ns, kubeconfig=path)
    raise ConfigurationError(
        "konductor has no store configured. Choose one of:\n"
        "  - run inside a Kubernetes pod (the service account is used),\n"
        "  - point KUBECONFIG at a kubeconfig (or create ~/.kube/config),\n"
        f"  - set {STORE_ENV} to one of: {VALID_STORES},\n"
        "  - pass store=... to the client (konductor.KubernetesStore, MemoryStore, ...)."
    )
