"""Least privilege: the shipped Role grants exactly what konductor uses, on a real server.

bob (an unprivileged token user) is bound to the shipped Role in a fresh
namespace and runs every primitive and the decorators; a Role missing any one
of its verbs makes the call that needs it fail with Forbidden naming the verb;
admin commands (spec updates, delete) need the optional admin Role.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from konductor import Client, Forbidden, NotFound, with_semaphore
from konductor._manifests import admin_rbac, rbac, runtime_rules
from konductor.store import JOB, LEASE, RATELIMIT, SEMAPHORE, Kind, KubernetesStore
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes

RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces"


def _bind(env: Any, namespace: str, role: dict[str, Any], binding: dict[str, Any]) -> None:
    binding = copy.deepcopy(binding)
    binding["subjects"] = [env.bob_subject]
    for plural, doc in (("roles", role), ("rolebindings", binding)):
        resp = env.request("POST", f"{RBAC}/{namespace}/{plural}", doc)
        assert resp.status == 201, resp.json()


async def _until_granted(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` once the authorizer's cache has the new binding (it lags briefly)."""
    for _ in range(100):
        try:
            return await call()
        except Forbidden:
            await asyncio.sleep(0.1)
    return await call()


async def test_the_shipped_role_runs_every_primitive(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    _sa, role, binding = rbac(ns)
    _bind(kube_crds, ns, role, binding)
    store = KubernetesStore(ns, kubeconfig=kube_crds.bob_kubeconfig)
    async with Client(store) as bob:
        permit = await _until_granted(lambda: bob.acquire_semaphore("sem", permits=2, ttl=3))
        assert await bob.try_acquire_semaphore("sem", ttl=3) is not None
        await permit.release()
        async with bob.mutex("m", ttl=3), bob.read_lock("rw", ttl=3):
            pass
        async with bob.write_lock("rw", ttl=3):
            pass
        async with bob.lease("leader", ttl=3) as lease:
            assert lease.token >= 0  # leaseTransitions starts at 0, as in client-go
            await asyncio.sleep(1.5)  # at least one renewal
            lease.ensure_held()
        await bob.arrive_and_wait("start", expected=1, timeout=10)
        await bob.create_gate("g")
        await bob.open_gate("g")
        await bob.wait_gate("g", timeout=10)

        async def migrate() -> str:
            return "done"

        assert await bob.once("migrate", migrate, ttl=3) == "done"
        await bob.waitgroup_add("wg", 1)
        await bob.waitgroup_done("wg")
        await bob.waitgroup_wait("wg", timeout=10)
        async with bob.rate_limit("provider", "10/s", ttl=3) as limiter:
            await limiter.acquire(timeout=10)
            await asyncio.sleep(1.5)  # at least one renewal
            (member,) = (await store.get(RATELIMIT, "provider")).status["members"]
            assert member["renewals"] >= 1
            assert limiter.share > 0

        @with_semaphore("decorated", permits=1, ttl=3, client=bob)
        async def guarded() -> int:
            return 7

        assert await guarded() == 7
        # What the runtime Role does not grant: admin commands.
        obj = await store.get(SEMAPHORE, "sem")
        with pytest.raises(Forbidden) as caught:
            await store.replace_spec(SEMAPHORE, "sem", {"permits": 3}, version=obj.version)
        assert "update" in str(caught.value)
        with pytest.raises(Forbidden) as caught:
            await store.delete(SEMAPHORE, "sem")
        assert "delete" in str(caught.value)
        # The optional admin Role adds exactly those.
        (admin_role,) = admin_rbac(ns)
        admin_binding = {**binding, "metadata": {**binding["metadata"], "name": "konductor-admin"}}
        admin_binding["roleRef"] = {**binding["roleRef"], "name": "konductor-admin"}
        _bind(kube_crds, ns, admin_role, admin_binding)
        obj = await _until_granted(
            lambda: store.replace_spec(SEMAPHORE, "sem", {"permits": 3}, version=obj.version)
        )
        await store.delete(SEMAPHORE, "sem")
        await store.delete(LEASE, "leader")


def _without(verb_index: int) -> tuple[list[dict[str, Any]], str, str]:
    """The runtime rules with one (rule, verb) removed; that verb and the rule's resource."""
    rules = runtime_rules()
    flat = [(i, v) for i, r in enumerate(rules) for v in r["verbs"]]
    rule_index, verb = flat[verb_index]
    rule = rules[rule_index]
    rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return [r for r in rules if r["verbs"]], verb, rule["resources"][0]


# The last rule (create events) is optional: tests/observability/test_events.py covers it.
VERBS = [_without(i)[1:] for i in range(sum(len(r["verbs"]) for r in runtime_rules()[:-1]))]
KINDS = {"semaphores": SEMAPHORE, "semaphores/status": SEMAPHORE, "leases": LEASE, "jobs": JOB}
SPECS: dict[Kind, dict[str, Any]] = {SEMAPHORE: {"permits": 1}, LEASE: {"holderIdentity": "x"}}


@pytest.mark.parametrize("index", range(len(VERBS)), ids=[f"{r}-{v}" for v, r in VERBS])
async def test_a_role_missing_any_one_verb_gives_forbidden_naming_it(
    kube_crds: Any, index: int
) -> None:
    ns = fresh_namespace(kube_crds)
    rules, verb, resource = _without(index)
    _sa, role, binding = rbac(ns)
    role["rules"] = rules
    _bind(kube_crds, ns, role, binding)
    kind = KINDS[resource]
    spec = SPECS.get(kind, {})
    admin = KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    store = KubernetesStore(ns, kubeconfig=kube_crds.bob_kubeconfig)
    async with admin, store:
        made = None if kind is JOB else await admin.create(kind, "obj", spec)
        since = (await admin.list(kind)).version

        async def call() -> Any:
            if verb == "get":
                return await store.get(kind, "obj")
            if verb == "list":
                return await store.list(kind)
            if verb == "watch":
                async with store.watch(kind, since=since) as events:
                    return await asyncio.wait_for(anext(events), 5)
            if verb == "create":
                return await store.create(kind, "fresh", spec)
            assert made is not None
            if verb == "patch":
                ops = [{"op": "add", "path": "/status/waiting", "value": 0}]
                return await store.patch_status(kind, "obj", ops)
            assert verb == "update"
            if kind is SEMAPHORE:
                return await store.replace_status(kind, "obj", {}, version=made.version)
            return await store.replace_spec(kind, "obj", spec, version=made.version)

        async def probe() -> None:
            """Another verb of the same Role: once it works, the binding is in effect."""
            try:
                if verb == "get":
                    await store.list(kind)
                else:
                    await store.get(kind, "obj")
            except NotFound:  # a Job that does not exist: allowed to look, though
                pass

        await _until_granted(probe)
        with pytest.raises(Forbidden) as caught:
            await call()
        assert verb in str(caught.value)
        assert kind.plural in str(caught.value)


async def test_a_role_from_before_patch_still_runs_the_queues(
    kube_crds: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Role without `patch` (older RBAC): writes fall back to compare-and-swap, with a warning."""
    ns = fresh_namespace(kube_crds)
    _sa, role, binding = rbac(ns)
    for rule in role["rules"]:
        rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    _bind(kube_crds, ns, role, binding)
    store = KubernetesStore(ns, kubeconfig=kube_crds.bob_kubeconfig)
    async with Client(store) as bob:
        first = await _until_granted(lambda: bob.acquire_semaphore("sem", permits=1, ttl=3))
        waiter = asyncio.ensure_future(bob.acquire_semaphore("sem", timeout=30, ttl=3))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        await first.release()
        second = await waiter
        assert second.token > first.token
        await second.release()
        async with bob.mutex("m", ttl=3), bob.read_lock("rw", ttl=3):
            pass
    assert any("not allowed to patch" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("timeout", [30.0, None])
async def test_a_waiter_that_may_not_watch_gets_forbidden_not_a_timeout(
    kube_crds: Any, timeout: float | None
) -> None:
    """Forbidden on the watch reaches the waiter: it neither times out nor waits forever."""
    ns = fresh_namespace(kube_crds)
    _sa, role, binding = rbac(ns)
    for rule in role["rules"]:
        if "semaphores" in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "watch"]
    _bind(kube_crds, ns, role, binding)
    async with (
        Client(KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as admin,
        Client(KubernetesStore(ns, kubeconfig=kube_crds.bob_kubeconfig)) as bob,
    ):
        held = await admin.acquire_semaphore("full", permits=1, ttl=5)
        await _until_granted(lambda: bob.try_acquire_semaphore("full", ttl=5))
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Forbidden) as caught:
            await asyncio.wait_for(bob.acquire_semaphore("full", ttl=5, timeout=timeout), 20)
        assert "watch" in str(caught.value)
        assert loop.time() - start < 10  # not after its timeout, and not never
        await held.release()
        # Nothing left behind: the refused waiter's ticket was withdrawn.
        obj = await admin._rt.store.get(SEMAPHORE, "full")
        assert obj.status["queue"] == []
