"""Kubernetes manifests (CRDs, RBAC) and the function that installs the CRDs."""

from konductor._manifests import admin_rbac, crd, crds, install_crds, rbac, to_yaml

__all__ = ("admin_rbac", "crd", "crds", "install_crds", "rbac", "to_yaml")
