"""Kubernetes Events for rare transitions, on the real API server; none on other stores."""

from __future__ import annotations

import asyncio
import copy
import logging
import subprocess
import sys
from typing import Any

import pytest

from konductor import Client, Forbidden, SemaphoreLost
from konductor._kube import _events
from konductor._manifests import rbac
from konductor._store._kinds import SEMAPHORE
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace


def events_of(env: Any, ns: str, name: str) -> list[dict[str, Any]]:
    resp = env.request(
        "GET", f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{name}"
    )
    assert resp.status == 200, resp.json()
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


async def lose_by_deletion(client: Client, admin: KubernetesStore, name: str) -> None:
    """Hold ``name`` and delete it under the holder: the next renewal loses the permit."""
    with pytest.raises(SemaphoreLost):
        async with client.semaphore(name, permits=1, ttl=3):
            await admin.delete(SEMAPHORE, name)
            await asyncio.sleep(30)  # cancelled by the loss, about 1 s later


async def drain() -> None:
    assert _events.recorder is not None
    await _events.recorder.drain()


@pytest.mark.kubernetes
async def test_lost_grants_and_leadership_are_events_rate_limited_and_never_per_grant(
    kube_crds: Any,
) -> None:
    ns = fresh_namespace(kube_crds)
    admin = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    store = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    async with admin, Client(store) as client:
        for _ in range(5):  # plain grants and releases: no Event
            async with client.semaphore("jobs", permits=1, ttl=3):
                pass
        await drain()
        assert events_of(kube_crds, ns, "jobs") == []

        await lose_by_deletion(client, admin, "jobs")
        await drain()
        [lost] = events_of(kube_crds, ns, "jobs")
        assert lost["type"] == "Warning"
        assert lost["reason"] == "GrantLost"
        assert lost["involvedObject"]["kind"] == "Semaphore"
        assert lost["involvedObject"]["apiVersion"] == "konductor.io/v1alpha1"
        assert lost["source"]["component"] == "konductor"
        assert "lost its grant (token 6)" in lost["message"]

        # A second loss of the same object within a minute: rate-limited, no second Event.
        assert _events.recorder is not None
        dropped = _events.recorder.dropped
        await lose_by_deletion(client, admin, "jobs")
        await drain()
        assert len(events_of(kube_crds, ns, "jobs")) == 1
        assert _events.recorder.dropped == dropped + 1

        async with client.lease("scheduler", ttl=3):
            pass
        await drain()
        messages = sorted(e["message"] for e in events_of(kube_crds, ns, "scheduler"))
        assert [m.rsplit(" ", 2)[-2:] for m in messages] == [
            ["became", "leader"],
            ["stopped", "leading"],
        ]
        assert {e["reason"] for e in events_of(kube_crds, ns, "scheduler")} == {"LeaderElection"}
        assert {e["involvedObject"]["kind"] for e in events_of(kube_crds, ns, "scheduler")} == {
            "Lease"
        }


@pytest.mark.kubernetes
async def test_the_shipped_role_may_record_events_and_one_without_the_rule_warns_once(
    kube_crds: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="konductor.events")
    for with_events in (True, False):
        ns = fresh_namespace(kube_crds)
        _sa, role, binding = rbac(ns)
        if not with_events:
            role["rules"] = [r for r in role["rules"] if r["resources"] != ["events"]]
        binding = copy.deepcopy(binding)
        binding["subjects"] = [kube_crds.bob_subject]
        for plural, doc in (("roles", role), ("rolebindings", binding)):
            resp = kube_crds.request(
                "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}", doc
            )
            assert resp.status == 201, resp.json()
        admin = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
        async with admin, Client(KubernetesStore(ns, kubeconfig=kube_crds.bob_kubeconfig)) as bob:
            for _ in range(100):  # the authorizer's cache lags the new binding briefly
                try:
                    permit = await bob.try_acquire_semaphore("jobs", permits=1)
                except Forbidden:
                    await asyncio.sleep(0.1)
                else:
                    assert permit is not None
                    await permit.release()
                    break
            caplog.clear()
            await lose_by_deletion(bob, admin, "jobs")
            await drain()
            warnings = [r for r in caplog.records if "cannot record Kubernetes Events" in r.message]
            if with_events:
                assert [e["reason"] for e in events_of(kube_crds, ns, "jobs")] == ["GrantLost"]
                assert warnings == []
            else:
                assert events_of(kube_crds, ns, "jobs") == []
                assert len(warnings) == 1
                assert "Grant `create` on `events`" in warnings[0].getMessage()


def test_no_events_machinery_on_the_memory_or_local_store(tmp_path: Any) -> None:
    code = (
        "import asyncio, sys\n"
        "from konductor import Client\n"
        "from konductor.store import MemoryStore, LocalStore\n"
        "async def main():\n"
        "    for store in (MemoryStore(), LocalStore(sys.argv[1])):\n"
        "        async with Client(store) as c, c.lease('l', ttl=3):\n"
        "            pass\n"
        "asyncio.run(main())\n"
        "print('konductor._kube._events' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "k.db")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_draining_ignores_and_forgets_sends_left_pending_on_a_closed_loop() -> None:
    # One recorder serves every loop of the process; a loop closed with a send in flight
    # (a SyncClient's, or a test's) must not break the next loop's drain.
    recorder = _events.EventRecorder()
    old = asyncio.new_event_loop()

    # A pending future stands for the send (a task would also be reported as
    # "destroyed but pending" when collected, which is not what this test is about).
    stuck = old.create_future()
    recorder._tasks.add(stuck)  # type: ignore[arg-type]
    old.close()
    assert not stuck.done()

    async def on_a_new_loop() -> None:
        mine = asyncio.get_running_loop().create_task(asyncio.sleep(0.01))
        recorder._tasks.add(mine)
        await recorder.drain()
        assert mine.done()

    asyncio.run(on_a_new_loop())
    assert stuck not in recorder._tasks


@pytest.mark.kubernetes
async def test_an_event_sent_as_its_client_closes_opens_nothing_and_logs_no_error(
    kube_crds: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A lease released just before the client closes schedules its "stopped leading"
    # Event as the store's connection goes: the send must neither open a connection
    # of its own (a session nobody closes: "Unclosed client session" at exit) nor
    # report the close as an error (which, unconfigured, logging prints on stderr).
    caplog.set_level(logging.DEBUG, logger="konductor.events")
    ns = fresh_namespace(kube_crds)
    for _ in range(5):
        store = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
        async with Client(store) as client, client.lease("scheduler", ttl=3):
            pass
        await drain()
        assert store._connected() is None
    problems = [r for r in caplog.records if r.name.startswith("konductor")]
    assert [r.getMessage() for r in problems if r.levelno >= logging.WARNING] == []
