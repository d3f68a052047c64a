"""How a client finds its store and namespace when it is not told."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from konductor import Client, ConfigurationError, InvalidArgument, KubernetesStore, MemoryStore
from konductor._kube import _config as kube


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("KONDUCTOR_STORE", "KONDUCTOR_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", tmp_path / "no-sa")
    return tmp_path


def write_kubeconfig(path: Path, namespace: str | None) -> Path:
    context: dict[str, object] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": context}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_nothing_configured_lists_every_option() -> None:
    with pytest.raises(ConfigurationError) as info:
        Client()
    message = str(info.value)
    for option in ("Kubernetes pod", "KUBECONFIG", "KONDUCTOR_STORE", "store="):
        assert option in message
    assert "local:/path" in message


def test_konductor_store_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDUCTOR_STORE", "memory")
    monkeypatch.setenv("KONDUCTOR_NAMESPACE", "team-a")
    client = Client()
    assert isinstance(client.store, MemoryStore)
    assert client.namespace == "team-a"


@pytest.mark.parametrize("value", ["redis", "kube", "memory:x", ""])
def test_bad_konductor_store_names_the_valid_values(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KONDUCTOR_STORE", value or " ")
    with pytest.raises(ConfigurationError) as info:
        Client()
    assert "kubernetes, memory, local" in str(info.value)


def test_kubeconfig_and_its_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kc", "from-context")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    client = Client()
    assert isinstance(client.store, KubernetesStore)
    assert client.namespace == "from-context"
    monkeypatch.setenv("KONDUCTOR_NAMESPACE", "from-env")
    assert Client().namespace == "from-env"
    assert Client(namespace="explicit").namespace == "explicit"


def test_kubeconfig_without_namespace_means_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", None)))
    assert Client().namespace == "default"


def make_service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("token")
    (sa / "namespace").write_text("pod-ns\n")
    (sa / "ca.crt").write_text("")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")


def test_in_cluster_uses_the_service_account_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_service_account(monkeypatch, tmp_path)
    # A kubeconfig on the path does not win over the pod's own service account.
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", "from-context")))
    client = Client()
    assert isinstance(client.store, KubernetesStore)
    assert client.namespace == "pod-ns"


def test_in_cluster_a_non_kubernetes_store_is_never_silent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_service_account(monkeypatch, tmp_path)
    monkeypatch.setenv("KONDUCTOR_STORE", "memory")
    with caplog.at_level(logging.WARNING, logger="konductor"):
        client = Client()
    assert isinstance(client.store, MemoryStore)
    assert "NOT cluster-wide" in caplog.text


def test_explicit_store_and_conflicting_namespace() -> None:
    store = MemoryStore("a")
    assert Client(store).namespace == "a"
    with pytest.raises(InvalidArgument, match="differs"):
        Client(store, namespace="b")


def test_identities_are_unique_per_client_and_overridable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "web-7f9c")
    a, b = Client(MemoryStore()), Client(MemoryStore())
    assert a.identity.startswith("web-7f9c-")
    assert a.identity != b.identity
    assert Client(MemoryStore(), identity="me").identity == "me"


def test_konductor_store_local_with_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from konductor import LocalStore

    monkeypatch.setenv("KONDUCTOR_STORE", "local:~/state/k.db")
    client = Client()
    assert isinstance(client.store, LocalStore)
    assert str(client.store.path) == str(tmp_path / "state" / "k.db")  # ~ expanded
