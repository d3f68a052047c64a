"""A holder that cannot renew loses its permit loudly, never silently."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, SemaphoreLost
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes


async def test_unrenewable_permit_cancels_the_body_and_exit_raises(
    kube_crds: Any, tmp_path: Path
) -> None:
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    cfg = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    store = KubernetesStore(ns, kubeconfig=cfg, retry_deadline=0.5, request_timeout=2)
    other = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    reached_end = False
    body_cancelled = False
    try:
        async with Client(store) as client, Client(other) as rival:
            loop = asyncio.get_running_loop()
            with pytest.raises(SemaphoreLost) as info:
                async with client.semaphore("fragile", permits=1, ttl=2) as permit:
                    proxy.reset()  # the API server is now unreachable for this holder
                    cut = loop.time()
                    try:
                        await asyncio.sleep(30)
                        reached_end = True
                    except asyncio.CancelledError:
                        body_cancelled = True
                        lost_after = loop.time() - cut
                        raise
            assert permit.is_lost
            assert "not renewed within its TTL" in str(info.value)
            assert body_cancelled
            assert not reached_end
            assert lost_after < 2 + 2  # by its own deadline (+ scheduling slack)
            # Another client gets the permit once the stale holder expires for it.
            async with rival.semaphore("fragile", ttl=2, timeout=30) as p2:
                assert p2.token > permit.token
            proxy.pass_through()
    finally:
        proxy.close()
