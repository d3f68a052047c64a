"""Kubernetes manifests (CRDs, RBAC) and the function that installs the CRDs."""

from konductor._manifests import crd, crds, install_crds, rbac, to_yaml

__all__ = ("crd", "crds", "install_crds", "rbac", "to_yaml")
