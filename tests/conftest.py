"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from konductor.testing.apiserver import ExternalCluster, LocalApiServer, test_environment

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
