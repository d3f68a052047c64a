"""Shared pytest fixtures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Iterator
from typing import Any

import pytest

from konductor.manifests import install_crds
from konductor.store import KubernetesStore
from konductor.testing.apiserver import ExternalCluster, LocalApiServer, test_environment

pytest_plugins = ("pytester",)

# --- Kubernetes test environment (konductor.testing.apiserver) --------------------
# One real API server for the whole session, started on first use: a private
# kube-apiserver + etcd on loopback (LocalApiServer), or the cluster named by
# $KONDUCTOR_TEST_KUBECONFIG (ExternalCluster). If it cannot start, every test that
# uses it errors: never skip, a missing server must not look like a passing run.


@pytest.fixture(scope="session")
def kube_env() -> Iterator[LocalApiServer | ExternalCluster]:
    env = test_environment()
    env.start()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def kube_crds(kube_env: Any) -> Any:
    """The session's API server with konductor's CRDs installed."""

    async def install() -> None:
        async with KubernetesStore(kubeconfig=kube_env.admin_kubeconfig) as store:
            await install_crds(store)

    # Requested lazily from inside async fixtures, so run on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, install()).result()
    return kube_env


# --- No silent skips -----------------------------------------------------------------
# scripts/test (and so CI) sets KONDUCTOR_NO_SKIP=1: there a skipped test is a
# failure, so a missing service or server can never pass for a green run.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("KONDUCTOR_NO_SKIP") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, but KONDUCTOR_NO_SKIP=1 forbids skips: {report.longrepr}"
