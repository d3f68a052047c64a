"""Kubernetes-specific store behaviour, against the real kube-apiserver.

What only a real API server can show: a missing CRD, RBAC refusals, watches
that the server times out, connections that break mid-stream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from konductor import CRDNotInstalled, Forbidden, NotFound, StoreUnavailable
from konductor.manifests import crds, rbac
from konductor.store import SEMAPHORE, Kind, KubernetesStore
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.store.test_conformance import Reader
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes

NOT_INSTALLED = Kind("Widget", "widgets", "konductor.io", "v1alpha1", True, False)


@pytest.fixture
def namespace(kube_crds: Any) -> str:
    return fresh_namespace(kube_crds)


async def test_missing_crd_is_a_clear_error(kube_crds: Any, namespace: str) -> None:
    async with KubernetesStore(namespace, kubeconfig=kube_crds.admin_kubeconfig) as store:
        for call in (
            store.get(NOT_INSTALLED, "w"),
            store.create(NOT_INSTALLED, "w", {}),
            store.list(NOT_INSTALLED),
        ):
            with pytest.raises(CRDNotInstalled) as info:
                await call
            message = str(info.value)
            assert "widgets.konductor.io" in message
            assert "konductor install" in message
            assert not isinstance(info.value, NotFound)
            assert info.value.status == 404
            assert info.value.__cause__ is None or "kubernetes_asyncio" in repr(
                type(info.value.__cause__)
            )


async def test_missing_crd_fails_a_watch_too(kube_crds: Any, namespace: str) -> None:
    async with KubernetesStore(namespace, kubeconfig=kube_crds.admin_kubeconfig) as store:
        listed = await store.list(SEMAPHORE)
        with pytest.raises(CRDNotInstalled):
            async with store.watch(NOT_INSTALLED, since=listed.version) as events:
                await anext(events)


async def test_unprivileged_user_is_forbidden_with_a_clear_message(
    kube_crds: Any, namespace: str
) -> None:
    async with KubernetesStore(namespace, kubeconfig=kube_crds.unprivileged_kubeconfig) as store:
        with pytest.raises(Forbidden) as info:
            await store.get(SEMAPHORE, "sem")
        message = str(info.value)
        assert info.value.status == 403
        assert "get" in message
        assert "semaphores.konductor.io" in message
        assert repr(namespace) in message
        assert "konductor manifests --rbac" in message
        assert isinstance(info.value, PermissionError)
        with pytest.raises(Forbidden) as info:
            await store.create(SEMAPHORE, "sem", {"permits": 1})
        assert "create" in str(info.value)


async def test_shipped_rbac_role_grants_what_konductor_uses(kube_crds: Any, namespace: str) -> None:
    """bob has no rights until the shipped Role is bound to him."""
    async with KubernetesStore(namespace, kubeconfig=kube_crds.bob_kubeconfig) as bob:
        with pytest.raises(Forbidden):
            await bob.list(SEMAPHORE)
        role, binding = rbac(namespace)[1:]
        binding["subjects"] = [kube_crds.bob_subject]
        resp = kube_crds.request(
            "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", role
        )
        assert resp.status == 201, resp.json()
        resp = kube_crds.request(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            binding,
        )
        assert resp.status == 201, resp.json()
        obj = None
        for _ in range(100):  # RBAC changes reach the authorizer's cache shortly
            try:
                obj = await bob.create(SEMAPHORE, "granted", {"permits": 2})
                break
            except Forbidden:
                await asyncio.sleep(0.1)
        assert obj is not None
        obj = await bob.replace_status(SEMAPHORE, "granted", {"inUse": 1}, version=obj.version)
        listed = await bob.list(SEMAPHORE)
        async with bob.watch(SEMAPHORE, since=listed.version) as events:
            obj = await bob.replace_status(SEMAPHORE, "granted", {"inUse": 0}, version=obj.version)
            ev = await asyncio.wait_for(anext(events), 30)
            assert ev.type == "MODIFIED"
        # Spec updates and deletes are admin commands: not in the runtime Role
        # (tests/store/test_rbac.py binds the admin Role for them).
        with pytest.raises(Forbidden):
            await bob.replace_spec(SEMAPHORE, "granted", {"permits": 3}, version=obj.version)
        with pytest.raises(Forbidden):
            await bob.delete(SEMAPHORE, "granted")


async def test_missing_namespace_is_named(kube_crds: Any) -> None:
    async with KubernetesStore("no-such-ns", kubeconfig=kube_crds.admin_kubeconfig) as store:
        with pytest.raises(NotFound) as info:
            await store.create(SEMAPHORE, "x", {"permits": 1})
        assert "no-such-ns" in str(info.value)


async def test_watch_resumes_across_server_timeouts(kube_crds: Any, namespace: str) -> None:
    """The server ends each watch after ~1 s; no change is lost or repeated."""
    cfg = kube_crds.admin_kubeconfig
    async with (
        KubernetesStore(namespace, kubeconfig=cfg, watch_timeout=(1, 1)) as watcher,
        KubernetesStore(namespace, kubeconfig=cfg) as writer,
    ):
        obj = await writer.create(SEMAPHORE, "timeouts", {"permits": 1})
        async with Reader(watcher.watch(SEMAPHORE, name="timeouts", since=obj.version)) as events:
            for i in range(1, 9):
                obj = await writer.replace_status(
                    SEMAPHORE, "timeouts", {"n": i}, version=obj.version
                )
                await asyncio.sleep(0.5)  # spans several server-side watch timeouts
            got = await events.take(8)
            await events.assert_quiet(1.5)
        assert [e.object.status["n"] for e in got] == list(range(1, 9))
        assert watcher.api_requests >= 4  # the stream really was reopened


async def test_watch_resumes_after_the_connection_breaks(
    kube_crds: Any, namespace: str, tmp_path: Path
) -> None:
    proxy = TcpProxy.to(kube_crds.server)
    via_proxy = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    try:
        async with (
            KubernetesStore(namespace, kubeconfig=via_proxy) as watcher,
            KubernetesStore(namespace, kubeconfig=kube_crds.admin_kubeconfig) as writer,
        ):
            obj = await writer.create(SEMAPHORE, "broken", {"permits": 1})
            async with Reader(watcher.watch(SEMAPHORE, name="broken", since=obj.version)) as events:
                obj = await writer.replace_status(
                    SEMAPHORE, "broken", {"n": 1}, version=obj.version
                )
                assert [e.object.status for e in await events.take(1)] == [{"n": 1}]
                proxy.reset()
                # Changes made while the watcher cannot reach the server...
                for i in (2, 3):
                    obj = await writer.replace_status(
                        SEMAPHORE, "broken", {"n": i}, version=obj.version
                    )
                await asyncio.sleep(0.5)
                proxy.pass_through()
                # ...arrive once it can, in order, once each.
                got = await events.take(2)
                assert [e.object.status for e in got] == [{"n": 2}, {"n": 3}]
                await events.assert_quiet(1.0)
            assert proxy.connections >= 2
    finally:
        proxy.close()


async def test_unreachable_server_raises_store_unavailable(kube_crds: Any, tmp_path: Path) -> None:
    proxy = TcpProxy("127.0.0.1", 9).start()  # nothing listens on the discard port
    proxy.reset()
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    try:
        async with KubernetesStore("default", kubeconfig=cfg, retry_deadline=0.5) as store:
            with pytest.raises(StoreUnavailable) as info:
                await store.get(SEMAPHORE, "x")
            assert f"127.0.0.1:{proxy.port}" in str(info.value)
            assert info.value.__cause__ is not None
            assert store.api_requests >= 2  # it retried before giving up
    finally:
        proxy.close()


def test_crd_manifests_cover_every_kind() -> None:
    names = {c["metadata"]["name"] for c in crds()}
    assert "semaphores.konductor.io" in names
    assert len(names) == 8  # one per konductor kind
