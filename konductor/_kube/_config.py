"""Turn a kubeconfig file or the pod's service account into an ApiClient.

kubernetes_asyncio is imported lazily here so that ``import konductor`` stays
cheap; it is a core dependency, so no install hint is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from konductor._errors import ConfigurationError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster() -> bool:
    """Whether this process runs in a pod with a mounted service account."""
    return (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (SERVICE_ACCOUNT_DIR / "token").is_file()
    )


def service_account_namespace() -> str | None:
    """The pod's namespace from the mounted service account, if there is one."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None


def default_kubeconfig_path() -> Path | None:
    """The first file named by ``KUBECONFIG``, else ``~/.kube/config``, if it exists."""
    env = os.environ.get("KUBECONFIG")
    if env:
        for part in env.split(os.pathsep):
            if part and Path(part).expanduser().is_file():
                return Path(part).expanduser()
        return None
    path = Path.home() / ".kube" / "config"
    return path if path.is_file() else None


def kubeconfig_namespace(path: str | os.PathLike[str], context: str | None = None) -> str | None:
    """The namespace set on the kubeconfig's current (or named) context, if any."""
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read kubeconfig {path}: {exc}") from exc
    if not isinstance(data, dict):
        return None
    wanted = context or data.get("current-context")
    for entry in data.get("contexts") or []:
        if isinstance(entry, dict) and entry.get("name") == wanted:
            ns = (entry.get("context") or {}).get("namespace")
            return ns if isinstance(ns, str) and ns else None
    return None


async def api_client_from_kubeconfig(
    path: str | os.PathLike[str], context: str | None = None
) -> Any:
    """A new ``kubernetes_asyncio`` ApiClient for the kubeconfig's cluster and user.

    Raises:
        ConfigurationError: the file is missing or malformed, or names no such context.
    """
    from kubernetes_asyncio import config as kconfig
    from kubernetes_asyncio.config.config_exception import ConfigException

    if not Path(path).is_file():
        raise ConfigurationError(f"kubeconfig {path} does not exist")
    try:
        return await kconfig.new_client_from_config(
            config_file=str(path), context=context, persist_config=False
        )
    except (ConfigException, OSError, yaml.YAMLError, KeyError, ValueError) as exc:
        raise ConfigurationError(f"cannot load kubeconfig {path}: {exc}") from exc


def api_client_in_cluster() -> Any:
    """A new ApiClient authenticated with the pod's service account token.

    Raises:
        ConfigurationError: no service account is mounted.
    """
    from kubernetes_asyncio import client as kclient
    from kubernetes_asyncio.config import incluster_config
    from kubernetes_asyncio.config.config_exception import ConfigException

    configuration = kclient.Configuration()
    try:
        incluster_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException as exc:
        raise ConfigurationError(f"cannot use the in-cluster service account: {exc}") from exc
    return kclient.ApiClient(configuration)
