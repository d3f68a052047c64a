"""Interoperability with client-go on the real API server.

A Lease written by konductor must read correctly with kubectl and with the
official field names; a Lease written the way client-go's leader election
writes it (plain API calls below, field for field) must be respected by
konductor until it expires on konductor's clock, then taken over with
``leaseTransitions`` incremented.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from konductor import Client
from konductor.store import KubernetesStore
from tests.primitives.lease_helpers import MICRO_TIME
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes

GO_HOLDER = "go-elector-7c9d_3f1e2a4b-0d3c-4c59-9b1e-8a7b2c1d0e5f"  # client-go: host_uuid


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Env:
    def __init__(self, kube: Any, namespace: str) -> None:
        self.kube = kube
        self.ns = namespace

    def path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases"
        return base if name is None else f"{base}/{name}"

    def get(self, name: str) -> dict[str, Any]:
        resp = self.kube.request("GET", self.path(name))
        assert resp.status == 200, resp.body
        doc: dict[str, Any] = resp.json()
        return doc

    def go_create(self, name: str, duration: int, transitions: int) -> dict[str, Any]:
        """Create the Lease as client-go's LeaseLock.Create does."""
        t = now_micro()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "holderIdentity": GO_HOLDER,
                "leaseDurationSeconds": duration,
                "acquireTime": t,
                "renewTime": t,
                "leaseTransitions": transitions,
            },
        }
        resp = self.kube.request("POST", self.path(), body)
        assert resp.status == 201, resp.body
        doc: dict[str, Any] = resp.json()
        return doc

    def go_update(self, doc: dict[str, Any], **spec: Any) -> dict[str, Any]:
        """Update the Lease as client-go's LeaseLock.Update does (PUT with resourceVersion)."""
        body = {**doc, "spec": {**doc["spec"], **spec}}
        resp = self.kube.request("PUT", self.path(doc["metadata"]["name"]), body)
        assert resp.status == 200, resp.body
        new: dict[str, Any] = resp.json()
        return new


@pytest.fixture
async def env(kube_crds: Any) -> AsyncIterator[tuple[Env, Client]]:
    ns = fresh_namespace(kube_crds)
    client = Client(KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig))
    try:
        yield Env(kube_crds, ns), client
    finally:
        await client.close()


def kubectl(kube: Any, *args: str) -> str:
    exe = shutil.which("kubectl")
    assert exe is not None, "kubectl is needed for this test (apt-get install kubernetes-client)"
    proc = subprocess.run(
        [exe, "--kubeconfig", str(kube.admin_kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_a_lease_written_by_konductor_reads_correctly_with_kubectl(
    env: tuple[Env, Client],
) -> None:
    api, client = env
    lease = await client.acquire_lease("scheduler", ttl=6)
    out = await asyncio.to_thread(
        kubectl, api.kube, "-n", api.ns, "get", "lease", "scheduler", "-o", "json"
    )
    doc = json.loads(out)
    assert doc["apiVersion"] == "coordination.k8s.io/v1"
    assert doc["kind"] == "Lease"
    spec = doc["spec"]
    assert spec["holderIdentity"] == client.identity == lease.holder
    assert spec["leaseDurationSeconds"] == 6
    assert spec["leaseTransitions"] == 0 == lease.token
    for field in ("acquireTime", "renewTime"):
        assert re.match(MICRO_TIME, spec[field]), spec[field]
    assert set(spec) == {
        "holderIdentity",
        "leaseDurationSeconds",
        "acquireTime",
        "renewTime",
        "leaseTransitions",
    }
    # The default table shows the holder, as for any client-go lease.
    table = await asyncio.to_thread(kubectl, api.kube, "-n", api.ns, "get", "lease")
    assert re.search(rf"^scheduler\s+{re.escape(client.identity)}\s", table, re.M), table

    # Renewals move renewTime forward (what a client-go observer watches for).
    await asyncio.sleep(3)
    renewed = api.get("scheduler")["spec"]
    assert renewed["renewTime"] > spec["renewTime"]
    assert renewed["acquireTime"] == spec["acquireTime"]

    await lease.release()
    released = api.get("scheduler")["spec"]
    assert released["holderIdentity"] == ""  # as ReleaseOnCancel: a Go candidate takes it now
    assert released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == 0


async def test_a_client_go_holder_is_respected_until_it_expires(env: tuple[Env, Client]) -> None:
    api, client = env
    doc = api.go_create("controller", duration=3, transitions=6)
    task = asyncio.ensure_future(client.acquire_lease("controller", ttl=4))
    # The Go elector renews every second for 5 s (longer than its duration).
    last_renewal = time.monotonic()
    for _ in range(5):
        await asyncio.sleep(1)
        assert not task.done()
        last_renewal = time.monotonic()
        doc = await asyncio.to_thread(api.go_update, doc, renewTime=now_micro())
    assert not task.done()
    # It stops. konductor takes over once it has seen the record unchanged for the
    # full leaseDurationSeconds: never earlier, and without waiting much longer.
    lease = await asyncio.wait_for(task, 30)
    waited = time.monotonic() - last_renewal
    assert waited >= 3.0, waited
    assert waited < 3.0 + 5, waited
    spec = api.get("controller")["spec"]
    assert spec["holderIdentity"] == client.identity
    assert spec["leaseTransitions"] == 7 == lease.token
    assert spec["leaseDurationSeconds"] == 4
    assert re.match(MICRO_TIME, spec["acquireTime"])
    assert spec["acquireTime"] == spec["renewTime"]
    await lease.release()


async def test_a_client_go_release_hands_over_at_once(env: tuple[Env, Client]) -> None:
    api, client = env
    doc = api.go_create("handover", duration=60, transitions=2)
    task = asyncio.ensure_future(client.acquire_lease("handover", ttl=5))
    await asyncio.sleep(1)
    assert not task.done()
    # client-go's ReleaseOnCancel: holder emptied, duration 1, transitions kept.
    t = now_micro()
    start = time.monotonic()
    await asyncio.to_thread(
        api.go_update,
        doc,
        holderIdentity="",
        leaseDurationSeconds=1,
        acquireTime=t,
        renewTime=t,
    )
    lease = await asyncio.wait_for(task, 30)
    assert time.monotonic() - start < 10  # not the 60 s of the Go holder's duration
    assert lease.token == 3
    assert api.get("handover")["spec"]["holderIdentity"] == client.identity
    await lease.release()
