"""konductor and a real client-go leader elector contending for one Lease.

The Go program (tests/support/clientgo/main.go, built by
scripts/build-client-go-elector.sh from the client-go vendored in the same
Kubernetes source as the test apiserver) runs client-go's own
``leaderelection`` with LeaseDuration 4 s, RenewDeadline 2.5 s, RetryPeriod
0.5 s; konductor campaigns with ttl 4 s. Both sides report "start-leading" /
"stop-leading" with CLOCK_MONOTONIC timestamps to one :class:`Witness`, outside
konductor, and every test asserts that they never led at the same time
(the documented margin is zero: each side must stop before the other starts).

Faults: SIGKILL, graceful release (SIGTERM / cancellation) and a blackhole of
either side's connection (tests/support/tcpproxy.py: connections stay open,
nothing is forwarded, requests hang).

Why no overlap is expected. A konductor holder gives up 0.9 x ttl = 3.6 s
after it sent its last successful renewal; client-go takes over only after it
has seen the record unchanged for its LeaseDuration (4 s), which starts after
that renewal arrived. A client-go holder gives up at most RetryPeriod +
RenewDeadline = 3 s after its last successful renewal; konductor takes over
after seeing the record unchanged for 4 s. A blackholed client-go can only be
told that it stopped leading when it does not release on cancel
(ReleaseOnCancel false, the usual "exit in OnStoppedLeading" setup): with
ReleaseOnCancel, v1.20's Run keeps the leader context alive until the release
request itself gives up (rest.Config.Timeout), which is client-go's behaviour,
not konductor's.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, CorruptState
from konductor._primitives._lease import Lease
from konductor.store import KubernetesStore
from tests.primitives.lease_helpers import (
    Contender,
    Witness,
    go_contender,
    konductor_contender,
)
from tests.primitives.test_lease_interop import Env
from tests.store.conftest import fresh_namespace, kubeconfig_via
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.kubernetes

TTL = 4.0
#: A konductor holder's own deadline after its last successful renewal was sent.
OWN_DEADLINE = 0.9 * TTL
#: Scheduling slack on a loaded 2-core machine, for "within" bounds (not for overlap).
SLACK = 0.5


class Harness:
    def __init__(self, kube: Any, tmp: Path) -> None:
        self.kube = kube
        self.ns = fresh_namespace(kube)
        self.env = Env(kube, self.ns)
        self.tmp = tmp
        self.witness = Witness()
        self.contenders: list[Contender] = []
        self.proxies: list[TcpProxy] = []
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Future[None]] = []

    @property
    def kubeconfig(self) -> Path:
        return Path(self.kube.admin_kubeconfig)

    def proxied(self) -> tuple[TcpProxy, Path]:
        proxy = TcpProxy.to(self.kube.server)
        self.proxies.append(proxy)
        return proxy, kubeconfig_via(self.kubeconfig, proxy.server, self.tmp)

    def go(self, who: str, name: str, kubeconfig: Path | None = None, **kw: Any) -> Contender:
        c = go_contender(self.witness, who, kubeconfig or self.kubeconfig, self.ns, name, **kw)
        self.contenders.append(c)
        return c

    def konductor_process(self, who: str, name: str) -> Contender:
        c = konductor_contender(self.witness, who, self.kubeconfig, self.ns, name, ttl=TTL)
        self.contenders.append(c)
        return c

    def konductor(
        self, who: str, name: str, kubeconfig: Path | None = None
    ) -> tuple[Client, asyncio.Future[None], list[Lease]]:
        """konductor campaigning in this process; its leases are appended to the list."""
        store = KubernetesStore(self.ns, kubeconfig=kubeconfig or self.kubeconfig)
        client = Client(store, identity=who)
        self.clients.append(client)
        leases: list[Lease] = []
        witness = self.witness

        async def lead(lease: Lease) -> None:
            leases.append(lease)
            witness.add(who, "start-leading", str(lease.token))
            try:
                await asyncio.Event().wait()
            finally:
                witness.add(who, "stop-leading", lease.lost_reason or "")

        task = asyncio.ensure_future(client.campaign(name, lead, ttl=TTL))
        self.tasks.append(task)
        return client, task, leases

    async def close(self) -> None:
        for p in self.contenders:
            p.close()
        for proxy in self.proxies:  # first, so that no release hangs in a blackhole
            proxy.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            await c.close()

    def assert_no_overlap(self, a: str, b: str) -> None:
        overlap = self.witness.overlap(a, b)
        assert overlap <= 0.0, (
            f"{a} and {b} led at the same time for {overlap:.3f}s: {self.witness.events}"
        )


@pytest.fixture
async def h(kube_crds: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(kube_crds, tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


def name() -> str:
    return f"elect-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def report() -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines
    for line in lines:
        print(line)


async def test_graceful_release_hands_over_in_both_directions(
    h: Harness, report: list[str]
) -> None:
    lease = name()
    go = h.go("go-a", lease)
    started = await h.witness.await_event("go-a", "start-leading", 30)
    _, task, leases = h.konductor("kon", lease)
    await asyncio.sleep(1.0)
    assert h.witness.first("kon", "start-leading") is None  # client-go holds it
    go.terminate()  # SIGTERM: client-go releases on cancel
    go_stop = h.witness.wait("go-a", "stop-leading", 10)
    kon_start = await h.witness.await_event("kon", "start-leading", 10)
    if go.release_failed():
        # client-go's own race (see Contender.release_failed): no release was
        # written, so konductor takes over when the record expires, not before.
        assert TTL - 1.0 - SLACK <= kon_start.at - go_stop.at <= TTL + 1.0 + SLACK
    else:
        # konductor is woken by the release (watch), not by expiry 4 s later.
        assert kon_start.at - go_stop.at < 2.0
    assert leases[0].token == 1  # client-go created it with 0; a take-over increments

    h.go("go-b", lease)
    await asyncio.sleep(1.5)
    assert h.witness.first("go-b", "start-leading") is None  # konductor holds it
    task.cancel()  # konductor releases on cancel
    kon_stop = await h.witness.await_event("kon", "stop-leading", 10)
    go_start = await h.witness.await_event("go-b", "start-leading", 10)
    # client-go polls every RetryPeriod (0.5 s) and takes a released Lease at once.
    assert go_start.at - kon_stop.at < 2.0
    doc = h.env.get(lease)
    assert doc["spec"]["holderIdentity"] == "go-b"
    assert doc["spec"]["leaseTransitions"] == 2
    h.assert_no_overlap("go-a", "kon")
    h.assert_no_overlap("go-b", "kon")
    report.append(
        f"graceful: go-a stop -> kon start {kon_start.at - go_stop.at:.3f}s, "
        f"kon stop -> go-b start {go_start.at - kon_stop.at:.3f}s (go-a led from {started.at})"
    )


async def test_sigkill_of_either_side_is_taken_over_after_the_lease_duration(
    h: Harness, report: list[str]
) -> None:
    # client-go killed: konductor takes over, only after 4 s without renewals.
    lease = name()
    go = h.go("go-a", lease)
    await h.witness.await_event("go-a", "start-leading", 30)
    h.konductor("kon", lease)
    await asyncio.sleep(1.0)
    go.kill()
    killed = h.witness.wait("go-a", "killed", 1)
    kon_start = await h.witness.await_event("kon", "start-leading", 15)
    h.assert_no_overlap("go-a", "kon")
    # The last renewal client-go sent was at most RetryPeriod before the kill;
    # konductor waits 4 s after seeing it.
    assert TTL - 0.5 - SLACK <= kon_start.at - killed.at <= TTL + 1.0 + SLACK

    # konductor (its own process) killed: client-go takes over after its 4 s.
    other = name()
    kon = h.konductor_process("kon-proc", other)
    await h.witness.await_event("kon-proc", "start-leading", 30)
    h.go("go-b", other)
    await asyncio.sleep(1.0)
    kon.kill()
    kon_killed = h.witness.wait("kon-proc", "killed", 1)
    go_start = await h.witness.await_event("go-b", "start-leading", 15)
    h.assert_no_overlap("go-b", "kon-proc")
    # konductor renews about every ttl/3, so its last renewal was <= 1.34 s before.
    assert TTL - TTL / 3 - SLACK <= go_start.at - kon_killed.at <= TTL + 0.5 + SLACK
    report.append(
        f"sigkill: go killed -> kon start {kon_start.at - killed.at:.3f}s; "
        f"kon killed -> go start {go_start.at - kon_killed.at:.3f}s"
    )


async def test_blackholed_clientgo_stops_leading_before_konductor_takes_over(
    h: Harness, report: list[str]
) -> None:
    lease = name()
    proxy, via = h.proxied()
    h.go("go-a", lease, via, release_on_cancel=False)
    await h.witness.await_event("go-a", "start-leading", 30)
    _, task, leases = h.konductor("kon", lease)
    moment = random.uniform(1.0, 2.0)  # a random moment in client-go's renewal cycle
    await asyncio.sleep(moment)
    cut = time.monotonic()
    proxy.blackhole()
    kon_start = await h.witness.await_event("kon", "start-leading", 20)
    go_stop = h.witness.first("go-a", "stop-leading")
    assert go_stop is not None, f"konductor took over while client-go leads: {h.witness.events}"
    assert go_stop.at < kon_start.at
    h.assert_no_overlap("go-a", "kon")
    # client-go gives up within RetryPeriod + RenewDeadline of its last renewal.
    assert go_stop.at - cut <= 3.0 + SLACK

    # Unblocked, client-go recovers: it campaigns again and leads once konductor lets go.
    proxy.pass_through()
    await asyncio.sleep(2.0)
    assert h.witness.first("go-a", "start-leading", after=kon_start.at) is None
    task.cancel()
    kon_stop = await h.witness.await_event("kon", "stop-leading", 10)
    back = await h.witness.await_event("go-a", "start-leading", 15, after=kon_stop.at)
    h.assert_no_overlap("go-a", "kon")
    assert leases[0].token == 1
    report.append(
        f"client-go blackholed {moment:.2f}s after konductor joined: "
        f"cut -> go stop {go_stop.at - cut:.3f}s, "
        f"cut -> kon start {kon_start.at - cut:.3f}s, gap {kon_start.at - go_stop.at:.3f}s; "
        f"after unblock go leads again {back.at - kon_stop.at:.3f}s after kon released"
    )


async def test_blackholed_konductor_is_cancelled_before_clientgo_takes_over(
    h: Harness, report: list[str]
) -> None:
    """Needs the Renewer's own deadline timer (issue 11): fails before that fix."""
    lease = name()
    proxy, via = h.proxied()
    _, _task, leases = h.konductor("kon", lease, via)
    await h.witness.await_event("kon", "start-leading", 30)
    h.go("go-a", lease)
    moment = random.uniform(1.0, 2.5)  # a random moment in konductor's renewal cycle
    await asyncio.sleep(moment)
    cut = time.monotonic()
    proxy.blackhole()
    go_start = await h.witness.await_event("go-a", "start-leading", 40)
    kon_stop = h.witness.first("kon", "stop-leading")
    assert kon_stop is not None, f"client-go leads while konductor's body runs: {h.witness.events}"
    assert kon_stop.at < go_start.at
    h.assert_no_overlap("go-a", "kon")
    held = leases[0]
    assert held.is_lost
    assert held.lost_reason is not None
    last_renewal = held._entry.sent_at
    assert kon_stop.at - last_renewal <= OWN_DEADLINE + SLACK
    assert last_renewal <= cut

    # Unblocked, konductor recovers: its campaign leads again once client-go lets go.
    proxy.pass_through()
    go = h.contenders[-1]
    await asyncio.sleep(2.0)
    go.terminate()
    go_stop = h.witness.wait("go-a", "stop-leading", 10)
    again = await h.witness.await_event("kon", "start-leading", 15, after=go_stop.at)
    h.assert_no_overlap("go-a", "kon")
    assert len(leases) == 2
    assert leases[1].token == leases[0].token + 2  # client-go's take-over, then ours
    report.append(
        f"konductor blackholed {moment:.2f}s after client-go joined: "
        f"cut -> kon body cancelled {kon_stop.at - cut:.3f}s "
        f"({kon_stop.at - last_renewal:.3f}s after its last renewal was sent), "
        f"cut -> go start {go_start.at - cut:.3f}s, gap {go_start.at - kon_stop.at:.3f}s; "
        f"after unblock kon leads again {again.at - go_stop.at:.3f}s after go released"
    )


OWNER_UID = "6a1f3c0e-58a4-4bd4-9b7e-2f0d6c1b9a11"
METADATA = {
    "labels": {"app.kubernetes.io/managed-by": "platform-team", "team": "a"},
    "annotations": {"example.com/owner": "payments", "example.com/ticket": "OPS-1"},
    "finalizers": ["example.com/keep"],
    "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": OWNER_UID}
    ],
}


def kept(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc["metadata"]
    return {k: meta.get(k) for k in METADATA}


async def test_every_writer_keeps_metadata_it_does_not_own(h: Harness) -> None:
    lease = name()
    t = "2026-01-01T00:00:00.000000Z"
    resp = h.kube.request(
        "POST",
        h.env.path(),
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": lease, **METADATA},
            "spec": {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": t,
                "renewTime": t,
                "leaseTransitions": 5,
                # Fields of Kubernetes 1.31+: v1.20's Lease has no such fields.
                "preferredHolder": "someone",
                "strategy": "OldestEmulationVersion",
            },
        },
    )
    assert resp.status == 201, resp.body
    created = resp.json()
    assert kept(created) == METADATA
    # What v1.20 does with unknown fields of a built-in type: drops them.
    assert "preferredHolder" not in created["spec"]
    assert "strategy" not in created["spec"]

    # konductor takes it, renews it, someone labels it meanwhile, konductor renews again.
    client = Client(KubernetesStore(h.ns, kubeconfig=h.kubeconfig), identity="kon")
    h.clients.append(client)
    held = await client.acquire_lease(lease, ttl=TTL)
    assert held.token == 6
    doc = h.env.get(lease)
    assert kept(doc) == METADATA
    first_renewal = doc["spec"]["renewTime"]
    await asyncio.sleep(TTL / 3 + 0.3)
    doc = h.env.get(lease)
    assert doc["spec"]["renewTime"] != first_renewal  # renewed
    assert kept(doc) == METADATA
    doc["metadata"]["labels"]["added-later"] = "yes"
    resp = h.kube.request("PUT", h.env.path(lease), doc)
    assert resp.status == 200, resp.body
    later = resp.json()["spec"]["renewTime"]
    await asyncio.sleep(TTL / 3 + 0.3)
    doc = h.env.get(lease)
    assert doc["spec"]["renewTime"] != later  # renewed after a conflict, from the new version
    expected = {**METADATA, "labels": {**METADATA["labels"], "added-later": "yes"}}
    assert kept(doc) == expected
    await held.release()
    doc = h.env.get(lease)
    assert doc["spec"]["holderIdentity"] == ""
    assert kept(doc) == expected

    # client-go takes it and releases it: it keeps the metadata too.
    go = h.go("go-a", lease)
    await h.witness.await_event("go-a", "start-leading", 30)
    assert h.env.get(lease)["spec"]["holderIdentity"] == "go-a"
    go.terminate()
    h.witness.wait("go-a", "stop-leading", 10)
    doc = h.env.get(lease)
    # Released, unless client-go's own release lost its race (Contender.release_failed).
    assert doc["spec"]["holderIdentity"] == ("go-a" if go.release_failed() else "")
    assert kept(doc) == expected

    # konductor again, after client-go's writes: a fresh store that has seen nothing.
    again = Client(KubernetesStore(h.ns, kubeconfig=h.kubeconfig), identity="kon-2")
    h.clients.append(again)
    async with again.lease(lease, ttl=TTL) as lease_again:
        assert lease_again.token == 8
        assert kept(h.env.get(lease)) == expected
    doc = h.env.get(lease)
    assert doc["spec"]["leaseTransitions"] == 8
    assert kept(doc) == expected


async def test_lease_transitions_at_the_int32_maximum(h: Harness) -> None:
    lease = name()
    t = "2026-01-01T00:00:00.000000Z"
    spec = {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": t,
        "renewTime": t,
        "leaseTransitions": 2**31 - 1,
    }
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": lease}}
    resp = h.kube.request("POST", h.env.path(), {**body, "spec": spec})
    assert resp.status == 201, resp.body
    # The server's own bounds: more than int32 cannot be written, nor a negative count.
    over = h.kube.request(
        "POST",
        h.env.path(),
        {**body, "metadata": {"name": f"{lease}-x"}, "spec": {**spec, "leaseTransitions": 2**31}},
    )
    assert over.status in (400, 422), over.body
    negative = h.kube.request(
        "POST",
        h.env.path(),
        {**body, "metadata": {"name": f"{lease}-y"}, "spec": {**spec, "leaseTransitions": -1}},
    )
    assert negative.status == 422, negative.body

    # client-go computes int32(old + 1) = -2147483648, which the server refuses:
    # it never leads. (This is why konductor does not copy it here.)
    go = h.go("go-a", lease)
    await asyncio.sleep(3.0)
    assert h.witness.first("go-a", "start-leading") is None
    assert any("leaseTransitions" in line for line in go.stderr), go.stderr
    go.close()

    # konductor refuses to hand out a token that goes backwards, names the repair,
    # and leads again once the Lease was deleted (its tokens then restart at 0).
    client = Client(KubernetesStore(h.ns, kubeconfig=h.kubeconfig), identity="kon")
    h.clients.append(client)
    with pytest.raises(CorruptState, match="int32"):
        await client.acquire_lease(lease, ttl=TTL, timeout=5)
    assert h.env.get(lease)["spec"]["leaseTransitions"] == 2**31 - 1  # nothing written
    h.kube.request("DELETE", h.env.path(lease))
    async with client.lease(lease, ttl=TTL, timeout=30) as held:
        assert held.token == 0


async def test_a_spec_write_with_a_version_learnt_elsewhere_keeps_metadata(h: Harness) -> None:
    from konductor.store import LEASE

    lease = name()
    resp = h.kube.request(
        "POST",
        h.env.path(),
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": lease, **METADATA},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": 3},
        },
    )
    assert resp.status == 201, resp.body
    async with (
        KubernetesStore(h.ns, kubeconfig=h.kubeconfig) as reader,
        KubernetesStore(h.ns, kubeconfig=h.kubeconfig) as writer,
    ):
        obj = await reader.get(LEASE, lease)
        # writer has never seen the object: it reads the metadata once, then writes.
        written = await writer.replace_spec(
            LEASE, lease, {**obj.spec, "leaseDurationSeconds": 9}, version=obj.version
        )
        assert written.spec["leaseDurationSeconds"] == 9
        assert kept(h.env.get(lease)) == METADATA
