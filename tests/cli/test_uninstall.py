"""``konductor uninstall`` on a private real API server (it removes the CRDs cluster-wide)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from konductor import Client, KubernetesStore
from konductor.testing.apiserver import LocalApiServer
from tests.cli.support import Target

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def private_server() -> Iterator[LocalApiServer]:
    # Not the session's server: deleting the CRDs would delete every other test's objects.
    with LocalApiServer() as env:
        yield env


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_uninstall_removes_rbac_and_crds_after_confirmation_and_keeps_a_prior_account(
    private_server: LocalApiServer,
) -> None:
    env = private_server
    env.create_namespace("apps")
    env.create_namespace("other")
    admin = env.admin_kubeconfig
    # The application's own ServiceAccount existed before install: it must survive.
    assert kubectl(admin, "-n", "apps", "create", "serviceaccount", "app").returncode == 0
    kube = Target(admin, "apps")
    kube.data("install", "--service-account", "app")
    kube.data("install")  # and konductor's own account

    async def objects() -> None:
        async with Client(KubernetesStore("other", kubeconfig=admin)) as client:
            await client.create_gate("g")
            await client.try_acquire_lease("kept")

    asyncio.run(objects())

    refused = kube.run("uninstall")  # no terminal, no --yes
    assert refused.returncode == 2
    assert "pass --yes to confirm" in refused.stderr
    assert "and with them 1 konductor object(s) in all namespaces (1 gates)" in refused.stderr
    assert kubectl(admin, "get", "crd", "gates.konductor.io").returncode == 0  # untouched

    done = kube.data("uninstall", "--yes")
    removed = {(r["kind"], r["name"]): r["action"] for r in done["removed"]}
    assert removed[("Role", "konductor")] == "deleted"
    assert removed[("RoleBinding", "konductor")] == "deleted"
    assert removed[("ServiceAccount", "konductor")] == "deleted"
    crd_actions = {n: a for (k, n), a in removed.items() if k == "CustomResourceDefinition"}
    assert len(crd_actions) == 8  # one per konductor kind
    assert set(crd_actions.values()) == {"deleted"}
    got = json.loads(kubectl(admin, "get", "crd", "-o", "json").stdout)
    assert [c for c in got["items"] if c["spec"]["group"] == "konductor.io"] == []
    assert kubectl(admin, "-n", "apps", "get", "role", "konductor").returncode != 0
    assert kubectl(admin, "-n", "apps", "get", "serviceaccount", "app").returncode == 0
    assert kubectl(admin, "-n", "other", "get", "lease", "kept").returncode == 0  # built-in
    # Again: nothing left, nothing fails.
    again = kube.data("uninstall", "--yes")
    assert {r["action"] for r in again["removed"]} == {"absent"}
