"""The test environment itself, against the real API server it provides."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from konductor.testing.apiserver import (
    ExternalCluster,
    KubeEnvError,
    LocalApiServer,
)

pytestmark = pytest.mark.kubernetes

Env = LocalApiServer | ExternalCluster
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


def _require_local(kube_env: Env) -> LocalApiServer:
    if not isinstance(kube_env, LocalApiServer):
        pytest.skip("needs the private local API server (KONDUCTOR_TEST_KUBECONFIG is set)")
    return kube_env


def test_server_is_ready_and_kubeconfigs_are_written(kube_env: Env) -> None:
    assert kube_env.server.startswith("https://")
    assert kube_env.request("GET", "/readyz").status == 200
    for user in ("admin", "alice", "bob"):
        path = kube_env.kubeconfig(user)
        doc = yaml.safe_load(path.read_text())
        current = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])
        assert current["context"].get("namespace", "default") == "default"
        cluster = next(c for c in doc["clusters"] if c["name"] == current["context"]["cluster"])
        assert cluster["cluster"]["server"].rstrip("/") == kube_env.server


def test_local_users_have_random_tokens(kube_env: Env) -> None:
    local = _require_local(kube_env)
    tokens = local.tokens
    assert set(tokens) == {"admin", "alice", "bob"}
    assert len(set(tokens.values())) == 3
    assert all(len(t) >= 32 for t in tokens.values())
    assert local.etcd_endpoint.startswith("http://127.0.0.1:")


def test_unprivileged_users_get_403(kube_env: Env) -> None:
    assert kube_env.request("GET", LEASES).status == 200
    for user in ("alice", "bob"):
        resp = kube_env.request("GET", LEASES, user=user)
        assert resp.status == 403, resp.body
        assert resp.reason == "Forbidden"


def test_admin_creates_namespace_and_409_is_ignored(kube_env: Env) -> None:
    name = f"konductor-env-{uuid.uuid4().hex[:8]}"
    kube_env.create_namespace(name)
    kube_env.create_namespace(name)  # AlreadyExists is fine
    resp = kube_env.request("GET", f"/api/v1/namespaces/{name}")
    assert resp.status == 200
    assert resp.json()["status"]["phase"] == "Active"


def test_compaction_forces_410_on_an_old_watch(kube_env: Env) -> None:
    if not kube_env.can_compact:
        pytest.skip("this cluster's etcd is not reachable: compaction cannot be forced")
    local = _require_local(kube_env)
    base = "/api/v1/namespaces/default/configmaps"
    name = f"compact-{uuid.uuid4().hex[:8]}"
    created = local.request("POST", base, {"metadata": {"name": name}, "data": {"n": "0"}})
    assert created.status == 201, created.body
    old_rv = created.json()["metadata"]["resourceVersion"]
    updated = local.request(
        "PUT", f"{base}/{name}", {"metadata": {"name": name}, "data": {"n": "1"}}
    )
    assert updated.status == 200, updated.body
    new_rv = updated.json()["metadata"]["resourceVersion"]
    watch = f"{base}?watch=1&fieldSelector=metadata.name%3D{name}&timeoutSeconds=5"

    # Before compaction the old resourceVersion still replays the update.
    before = local.request("GET", f"{watch}&resourceVersion={old_rv}").events()
    assert [e["type"] for e in before] == ["MODIFIED"]

    revision = local.compact_etcd()
    assert revision >= int(new_rv)

    after = local.request("GET", f"{watch}&resourceVersion={old_rv}")
    assert after.status == 200
    events = after.events()
    assert len(events) == 1, events
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"

    # A version taken after the compaction still works. (The object's own newest
    # version is only safe if nothing else wrote before the compaction; in a
    # full test run other clients do, so take the collection's current one.)
    latest = local.request("GET", base).json()["metadata"]["resourceVersion"]
    assert int(latest) >= revision
    fresh = local.request("GET", f"{watch}&resourceVersion={latest}&timeoutSeconds=1")
    assert fresh.status == 200
    assert fresh.events() == []


async def test_kubeconfigs_work_with_kubernetes_asyncio(kube_env: Env) -> None:
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    async def list_leases(kubeconfig: Path) -> int:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            leases = await client.CoordinationV1Api(api).list_namespaced_lease("default")
            return len(leases.items)

    assert await list_leases(kube_env.admin_kubeconfig) >= 0
    with pytest.raises(ApiException) as info:
        await list_leases(kube_env.alice_kubeconfig)
    assert info.value.status == 403


def test_second_local_server_does_not_collide_and_stops_cleanly(kube_env: Env) -> None:
    local = _require_local(kube_env)
    with LocalApiServer() as other:
        assert other.server != local.server
        assert other.etcd_endpoint != local.etcd_endpoint
        assert other.request("GET", "/readyz").status == 200
        assert local.request("GET", "/readyz").status == 200
        assert other.tokens["admin"] != local.tokens["admin"]
        # Tokens are per server.
        assert other.request("GET", "/readyz", user="admin").status == 200
        pids = other.pids
        workdir = other.workdir
    assert workdir is not None
    assert not workdir.exists()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert local.request("GET", "/readyz").status == 200


def test_start_failure_raises_with_log_tail(kube_env: Env) -> None:
    _require_local(kube_env)
    server = LocalApiServer(extra_apiserver_args=["--no-such-flag"])
    with pytest.raises(KubeEnvError) as info:
        server.start()
    message = str(info.value)
    assert "kube-apiserver exited" in message
    assert "unknown flag: --no-such-flag" in message
    assert "tail of" in message
    assert server.workdir is None  # cleaned up
