"""``konductor_api_requests_total`` and ``konductor_api_retries_total`` on the real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from konductor import AlreadyExists, Conflict, NotFound, StoreUnavailable
from konductor._store._kinds import SEMAPHORE
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes


def requests(reg: CollectorRegistry, verb: str, outcome: str) -> float:
    labels = {"verb": verb, "primitive": "semaphore", "outcome": outcome}
    return reg.get_sample_value("konductor_api_requests_total", labels) or 0.0


async def test_requests_are_counted_by_verb_and_outcome(
    kube_crds: Any, registry: CollectorRegistry
) -> None:
    ns = fresh_namespace(kube_crds)
    async with KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig) as store:
        obj = await store.create(SEMAPHORE, "s", {"permits": 1})
        with pytest.raises(AlreadyExists):
            await store.create(SEMAPHORE, "s", {"permits": 1})
        await store.replace_status(SEMAPHORE, "s", {"nextToken": 1}, version=obj.version)
        with pytest.raises(Conflict):  # a stale version: the API server's 409
            await store.replace_status(SEMAPHORE, "s", {"nextToken": 2}, version=obj.version)
        with pytest.raises(NotFound):
            await store.get(SEMAPHORE, "missing")
        await store.get(SEMAPHORE, "s")
    assert requests(registry, "create", "ok") == 1
    assert requests(registry, "create", "already_exists") == 1
    assert requests(registry, "update", "ok") == 1
    assert requests(registry, "update", "conflict") == 1
    assert requests(registry, "get", "not_found") == 1
    assert requests(registry, "get", "ok") == 1


async def test_retries_and_unanswered_requests_are_counted(
    kube_crds: Any, registry: CollectorRegistry, tmp_path: Path
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    try:
        async with KubernetesStore(ns, kubeconfig=cfg, retry_deadline=1.0) as store:
            await store.create(SEMAPHORE, "s", {"permits": 1})
            proxy.reset()  # connections refused: every attempt fails fast
            with pytest.raises(StoreUnavailable):
                await store.get(SEMAPHORE, "s")
            proxy.pass_through()
    finally:
        proxy.close()
    failed = requests(registry, "get", "unavailable")
    retries = registry.get_sample_value(
        "konductor_api_retries_total", {"verb": "get", "primitive": "semaphore"}
    )
    assert failed >= 2  # retried with backoff within the 1 s retry deadline
    assert retries == failed - 1  # every failed attempt but the last was retried
    assert requests(registry, "get", "ok") == 0
