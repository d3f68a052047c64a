"""Every ``konductor`` subcommand against the real kube-apiserver, run as its own process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from typing import Any

import pytest
import yaml

from konductor import Client, KubernetesStore
from tests.cli.support import Target, eventually, finish, kill_all, konductor
from tests.store.conftest import fresh_namespace

pytestmark = pytest.mark.kubernetes


def kubectl(env: Any, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(env.admin_kubeconfig), *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )


def entries(kube: Target, name: str) -> tuple[list[Any], list[Any]]:
    """Holders and queue of semaphore ``name`` (none while it does not exist yet)."""
    proc = kube.run("semaphore", "get", name, "-o", "json")
    if proc.returncode == 1 and "not found" in proc.stderr:
        return [], []
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    return got["holders"], got["queue"]


def held_lease(kube: Target, name: str) -> Any:
    """The Lease's status once somebody holds it (None before, also while it does not exist)."""
    proc = kube.run("lease", "status", name, "-o", "json")
    if proc.returncode != 0:
        return None
    got = json.loads(proc.stdout)
    return got if got["held"] else None


# -- install and manifests -------------------------------------------------------------


def test_install_applies_crds_and_rbac_and_is_idempotent(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    kube = Target(kube_crds.admin_kubeconfig, ns)
    first = kube.data("install")
    applied = {(r["kind"], r["name"]): r["action"] for r in first["applied"]}
    crd_names = {n for k, n in applied if k == "CustomResourceDefinition"}
    assert crd_names == {
        f"{p}.konductor.io"
        for p in (
            "semaphores",
            "barriers",
            "gates",
            "mutexes",
            "rwmutexes",
            "onces",
            "waitgroups",
            "ratelimits",
        )
    }
    assert {applied[(k, "konductor")] for k in ("ServiceAccount", "Role", "RoleBinding")} == {
        "created"
    }
    again = kube.run("install")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged") == 3  # SA, Role, RoleBinding
    assert again.stdout.count("established") == 8
    # The Role was edited by someone: install puts the shipped rules back.
    role = json.loads(kubectl(kube_crds, "-n", ns, "get", "role", "konductor", "-o", "json").stdout)
    role["rules"] = role["rules"][:1]
    assert kubectl(kube_crds, "apply", "-f", "-", input=json.dumps(role)).returncode == 0
    fixed = kube.data("install", "--no-crds")
    assert {r["kind"]: r["action"] for r in fixed["applied"]}["Role"] == "configured"
    # The service account may now do what konductor does, in this namespace only.
    sa = f"system:serviceaccount:{ns}:konductor"
    for verb, resource, *sub in [
        ("update", "semaphores.konductor.io", "--subresource=status"),
        ("watch", "leases.coordination.k8s.io"),
        ("get", "jobs.batch"),
    ]:
        eventually(  # RBAC changes reach the authorizer's cache shortly
            lambda v=verb, r=resource, sub=sub: (
                kubectl(
                    kube_crds, "auth", "can-i", v, r, *sub, "-n", ns, f"--as={sa}"
                ).stdout.strip()
                == "yes"
            ),
            what=f"{sa} may {verb} {resource} {' '.join(sub)}",
        )
    # ...and no more: spec updates and deletes are for the admin Role.
    for verb in ("update", "delete", "patch"):
        denied = kubectl(kube_crds, "auth", "can-i", verb, "semaphores", "-n", ns, f"--as={sa}")
        assert denied.stdout.strip() == "no", verb
    other = kubectl(kube_crds, "auth", "can-i", "get", "semaphores", "-n", "default", f"--as={sa}")
    assert other.stdout.strip() == "no"


def test_manifests_applied_with_kubectl(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    rendered = konductor("manifests", "--rbac", "--namespace", ns, "--service-account", "app")
    assert rendered.returncode == 0, rendered.stderr
    applied = kubectl(kube_crds, "apply", "-f", "-", input=rendered.stdout)
    assert applied.returncode == 0, applied.stderr
    assert "rolebinding.rbac.authorization.k8s.io/konductor created" in applied.stdout
    sa = f"system:serviceaccount:{ns}:app"
    eventually(  # RBAC changes reach the authorizer's cache shortly
        lambda: (
            kubectl(kube_crds, "-n", ns, f"--as={sa}", "get", "semaphores,leases").returncode == 0
        ),
        what=f"{sa} may list semaphores and leases",
    )
    denied = kubectl(kube_crds, "-n", "default", f"--as={sa}", "get", "semaphores")
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    # The CRDs as printed are exactly what the cluster accepts (and already has).
    crds = konductor("manifests")
    dry = kubectl(kube_crds, "apply", "--dry-run=server", "-f", "-", input=crds.stdout)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("customresourcedefinition") == 8  # one per konductor kind


def test_forbidden_user_gets_exit_1_and_the_rbac_hint(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)
    alice = Target(kube_crds.alice_kubeconfig, ns)
    for args in (["status"], ["semaphore", "list"], ["lease", "status", "x"]):
        proc = alice.run(*args)
        assert proc.returncode == 1, proc.stderr
        assert "forbidden" in proc.stderr
        assert "konductor manifests --rbac" in proc.stderr or "cannot list" in proc.stderr
    install = alice.run("install")
    assert install.returncode == 1
    assert "forbidden" in install.stderr


# -- semaphore ------------------------------------------------------------------------


def test_semaphore_create_get_list_delete(kube: Target) -> None:
    made = kube.run("semaphore", "create", "pool", "--permits", "3")
    assert made.returncode == 0, made.stderr
    assert "created" in made.stdout
    assert kube.run("semaphore", "create", "pool", "--permits", "3").stdout.count("unchanged") == 1
    clash = kube.run("semaphore", "create", "pool", "--permits", "5")
    assert clash.returncode == 1
    assert "--update" in clash.stderr
    assert kube.data("semaphore", "create", "pool", "--permits", "5", "--update")["permits"] == 5
    assert kube.run("semaphore", "create", "other", "--permits", "1").returncode == 0
    got = kube.data("semaphore", "get", "pool")
    assert (got["permits"], got["inUse"], got["waiting"], got["holders"]) == (5, 0, 0, [])
    yaml_got = yaml.safe_load(kube.run("semaphore", "get", "pool", "-o", "yaml").stdout)
    assert yaml_got == got
    table = kube.run("semaphore", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "PERMITS", "IN-USE", "WAITING"]
    assert [line.split()[:2] for line in table[1:]] == [["other", "1"], ["pool", "5"]]
    assert [i["name"] for i in kube.data("semaphore", "list")["items"]] == ["other", "pool"]
    assert kube.run("semaphore", "delete", "other").returncode == 0
    missing = kube.run("semaphore", "get", "other")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert kube.run("semaphore", "delete", "other").returncode == 1


def test_semaphore_acquire_holds_until_sigint_and_status_shows_it(kube: Target) -> None:
    holder = kube.spawn(
        "semaphore", "acquire", "gpu", "--permits", "2", "--count", "2", "--ttl", "6"
    )
    try:
        held = eventually(lambda: entries(kube, "gpu")[0], what="the holder entry")
        assert held[0]["count"] == 2
        assert held[0]["ttlSeconds"] == 6
        # A second acquirer cannot get in: exit 3 after its timeout, nothing left queued.
        late = kube.run("semaphore", "acquire", "gpu", "--timeout", "1")
        assert late.returncode == 3, late.stderr
        assert "not granted within 1s" in late.stderr
        assert entries(kube, "gpu")[1] == []
        status = kube.data("status")
        (row,) = [o for o in status["objects"] if o["name"] == "gpu"]
        assert row["kind"] == "Semaphore"
        assert row["state"] == "2/2 in use"
        (entry,) = row["entries"]
        assert (entry["role"], entry["count"], entry["ttlSeconds"]) == ("holder", 2, 6)
        assert entry["identity"] == held[0]["identity"]
        assert entry["renewedAt"].endswith("Z")
        text = kube.run("status").stdout.splitlines()
        assert text[0].split() == [
            "KIND",
            "NAME",
            "STATE",
            "ROLE",
            "IDENTITY",
            "TOKEN",
            "TTL",
            "RENEWED",
        ]
        assert any(line.split()[:2] == ["Semaphore", "gpu"] and "6s" in line for line in text)
        # It holds across several renewals (ttl/3 = 2 s) ...
        first = held[0]["renewedAt"]
        eventually(lambda: entries(kube, "gpu")[0][0]["renewedAt"] != first, what="a renewal")
        holder.send_signal(signal.SIGINT)
        code, out, err = finish(holder)
        # ... and Ctrl-C releases it: exit 0, no holder left.
        assert code == 0, err
        assert "acquired semaphore 'gpu': token 1" in out
        assert "holding; Ctrl-C to release" in err
        assert "released semaphore 'gpu'" in err
        assert entries(kube, "gpu") == ([], [])
    finally:
        kill_all([holder])


def test_semaphore_acquire_json_and_for(kube: Target) -> None:
    proc = kube.run("semaphore", "acquire", "brief", "--permits", "1", "--for", "1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["name"], got["token"], got["count"]) == ("brief", 1, 1)
    assert entries(kube, "brief") == ([], [])
    missing = kube.run("semaphore", "acquire", "absent", "--timeout", "1")
    assert missing.returncode == 1
    assert "pass --permits N to create it" in missing.stderr


def test_semaphore_release_removes_a_stuck_holder_and_the_next_waiter_gets_in(
    kube: Target,
) -> None:
    a = kube.spawn("semaphore", "acquire", "stuck", "--permits", "1", "--ttl", "3")
    b = c = None
    try:
        (held,) = eventually(lambda: entries(kube, "stuck")[0], what="holder a")
        b = kube.spawn("semaphore", "acquire", "stuck", "--ttl", "3")
        c = kube.spawn("semaphore", "acquire", "stuck", "--ttl", "3")
        queue = eventually(
            lambda: (q := entries(kube, "stuck")[1]) and len(q) == 2 and q, what="2 waiters"
        )
        wrong = kube.run("semaphore", "release", "stuck", "--holder", "nobody")
        assert wrong.returncode == 1
        assert "matches --holder nobody" in wrong.stderr
        removed = kube.data("semaphore", "release", "stuck", "--holder", held["identity"])
        assert [e["identity"] for e in removed["removed"]] == [held["identity"]]
        # The first waiter is promoted in the same write; the old holder learns at
        # its next renewal (ttl/3) that its entry is gone, and exits 1.
        holders, rest = entries(kube, "stuck")
        assert [h["identity"] for h in holders] == [queue[0]["identity"]]
        code, _, err = finish(a)
        assert code == 1
        assert "the permit was lost" in err
        # A waiter can be removed by its entry id, and everything with --all.
        removed = kube.data("semaphore", "release", "stuck", "--id", queue[1]["id"])
        assert [e["id"] for e in removed["removed"]] == [queue[1]["id"]]
        assert [e["id"] for e in rest] == [queue[1]["id"]]
        kube.data("semaphore", "release", "stuck", "--all")
        for p in (b, c):
            p.send_signal(signal.SIGTERM)
        for p in (b, c):
            code, _, err = finish(p)
            assert code in (0, 1, 143), err  # released (0), lost (1) or stopped waiting (143)
        assert entries(kube, "stuck") == ([], [])
        assert kube.data("semaphore", "release", "stuck", "--all")["removed"] == []
    finally:
        kill_all([p for p in (a, b, c) if p is not None])


def test_semaphore_delete_refuses_while_held_unless_forced(kube: Target) -> None:
    holder = kube.spawn("semaphore", "acquire", "busy", "--permits", "1", "--ttl", "3")
    try:
        eventually(lambda: entries(kube, "busy")[0], what="the holder")
        refused = kube.run("semaphore", "delete", "busy")
        assert refused.returncode == 1
        assert "--force" in refused.stderr
        assert kube.run("semaphore", "delete", "busy", "--force").returncode == 0
        code, _, err = finish(holder)
        assert code == 1  # its renewal found the semaphore gone: lost
        assert "lost" in err
    finally:
        kill_all([holder])


# -- barrier --------------------------------------------------------------------------


def test_barrier_arrive_wait_status(kube: Target) -> None:
    waiting = kube.run("barrier", "wait", "start", "--timeout", "1")
    assert waiting.returncode == 3
    assert "does not exist" in waiting.stderr
    first = kube.data("barrier", "arrive", "start", "--expected", "3", "--party", "a")
    assert (first["arrivedCount"], first["expected"], first["open"]) == (1, 3, False)
    again = kube.data("barrier", "arrive", "start", "--party", "a")
    assert again["arrivedCount"] == 1  # the same party counts once
    waiter = kube.spawn("barrier", "wait", "start", "--timeout", "120", "-o", "json")
    arriver = kube.spawn("barrier", "arrive", "start", "--party", "b", "--wait", "--timeout", "120")
    try:
        status = kube.run("barrier", "status", "start")
        assert status.returncode == 0
        assert status.stdout.splitlines()[2].split() == ["Expected:", "3"]
        timed_out = kube.run(
            "barrier", "arrive", "start", "--party", "c", "--wait", "--timeout", "0"
        )
        # c arrives (the barrier opens) and returns at once, or times out at 0 s.
        assert timed_out.returncode in (0, 3)
        code, out, err = finish(waiter)
        assert code == 0, err
        assert json.loads(out)["open"] is True
        code, out, err = finish(arriver)
        assert code == 0, err
        assert "3/3 arrived (open)" in out
        got = kube.data("barrier", "status", "start")
        assert sorted(got["arrived"]) == ["a", "b", "c"]
        assert got["missing"] == 0
    finally:
        kill_all([waiter, arriver])


# -- lease ----------------------------------------------------------------------------


def test_lease_acquire_status_release(kube: Target) -> None:
    leader = kube.spawn("lease", "acquire", "scheduler", "--ttl", "3")
    try:
        got = eventually(lambda: held_lease(kube, "scheduler"), what="the leader")
        assert got["leaseDurationSeconds"] == 3
        challenger = kube.run("lease", "acquire", "scheduler", "--timeout", "1")
        assert challenger.returncode == 3
        assert f"held by {got['holder']!r}" in challenger.stderr
        text = kube.run("lease", "status", "scheduler").stdout
        assert f"Holder:       {got['holder']}" in text
        wrong = kube.run("lease", "release", "scheduler", "--holder", "someone-else")
        assert wrong.returncode == 1
        assert f"held by {got['holder']}" in wrong.stderr
        released = kube.data("lease", "release", "scheduler", "--holder", got["holder"])
        assert released["released"] == got["holder"]
        assert released["held"] is False
        code, _, err = finish(leader)
        assert code == 1  # its next renewal finds leadership gone
        assert "leadership was lost" in err
        assert kube.run("lease", "release", "scheduler").stdout.startswith(
            "lease 'scheduler' is not held"
        )
        # Ctrl-C releases a lease it holds, and the transitions count up.
        second = kube.spawn("lease", "acquire", "scheduler")
        eventually(lambda: kube.data("lease", "status", "scheduler")["held"], what="leader 2")
        second.send_signal(signal.SIGINT)
        code, out, err = finish(second)
        assert code == 0, err
        assert "token 1" in out
        assert kube.data("lease", "status", "scheduler")["held"] is False
    finally:
        kill_all([leader])


# -- gate -----------------------------------------------------------------------------


def test_gate_open_close_wait_status(kube: Target) -> None:
    closed = kube.data("gate", "close", "deploy")
    assert (closed["open"], closed["flag"]) == (False, False)
    assert kube.run("gate", "wait", "deploy", "--timeout", "1").returncode == 3
    waiter = kube.spawn("gate", "wait", "deploy", "--timeout", "120")
    try:
        opened = kube.run("gate", "open", "deploy")
        assert opened.returncode == 0
        assert "gate 'deploy' is open (opened by hand)" in opened.stdout
        code, out, err = finish(waiter)
        assert code == 0, err
        assert "is open" in out
    finally:
        kill_all([waiter])
    assert kube.data("gate", "close", "deploy")["open"] is False
    # A gate with a condition opens when its barrier does.
    cond = kube.spawn(
        "gate", "wait", "after-start", "--condition", "barrier/ready", "--timeout", "120"
    )
    try:
        eventually(
            lambda: kube.run("gate", "status", "after-start").returncode == 0, what="the gate"
        )
        assert kube.data("gate", "status", "after-start")["conditions"][0]["met"] is False
        assert kube.run("barrier", "arrive", "ready", "--expected", "1").returncode == 0
        code, _, err = finish(cond)
        assert code == 0, err
        got = kube.data("gate", "status", "after-start")
        assert (got["open"], got["flag"], got["conditions"][0]["met"]) == (True, False, True)
    finally:
        kill_all([cond])


# -- once -----------------------------------------------------------------------------


def test_once_run_status_reset(kube: Target) -> None:
    assert kube.data("once", "status", "migrate")["state"] == "Pending"
    ran = kube.run("once", "run", "migrate", "--", "sh", "-c", "echo migrating")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "migrating\n"
    skipped = kube.run("once", "run", "migrate", "--", "sh", "-c", "echo migrating")
    assert skipped.returncode == 0
    assert skipped.stdout == ""
    assert "is done" in skipped.stderr
    got = kube.data("once", "status", "migrate")
    assert (got["state"], got["attempt"]) == ("Done", 1)
    reset = kube.data("once", "reset", "migrate")
    assert reset["state"] == "Done"  # the state before the reset
    assert kube.data("once", "status", "migrate")["state"] == "Pending"
    # A run in progress is reset only with --force (and that stops it).
    runner = kube.spawn("once", "run", "migrate", "--ttl", "3", "--", "sleep", "60")
    try:
        eventually(
            lambda: kube.data("once", "status", "migrate")["state"] == "Running", what="running"
        )
        refused = kube.run("once", "reset", "migrate")
        assert refused.returncode == 2
        assert "pass --force" in refused.stderr
        assert kube.run("once", "reset", "migrate", "--force").returncode == 0
        code, _, err = finish(runner)
        assert code == 1, err  # its claim was revoked: the command was stopped
        assert "lost" in err
    finally:
        kill_all([runner])


# -- status ---------------------------------------------------------------------------


def test_status_lists_every_kind(kube: Target, kube_crds: Any) -> None:
    async def make_objects() -> None:
        store = KubernetesStore(kube.namespace, kubeconfig=kube.kubeconfig)
        async with Client(store) as client:
            await client.waitgroup_add("jobs", 2)
            lock = await client.acquire_mutex("m")
            await lock.release()
            read = await client.read_lock("rw").obtain()
            await read.release()

    asyncio.run(make_objects())
    assert kube.run("semaphore", "create", "s", "--permits", "2").returncode == 0
    assert kube.run("barrier", "arrive", "b", "--expected", "2").returncode == 0
    assert kube.run("gate", "close", "g").returncode == 0
    assert kube.run("once", "run", "o", "--", "true").returncode == 0
    assert kube.run("lease", "acquire", "l", "--for", "0").returncode == 0
    got = kube.data("status")
    states = {(o["kind"], o["name"]): o["state"] for o in got["objects"]}
    assert states == {
        ("Semaphore", "s"): "0/2 in use",
        ("Barrier", "b"): "1/2 arrived",
        ("Gate", "g"): "closed",
        ("Mutex", "m"): "free",
        ("RWMutex", "rw"): "free",
        ("Once", "o"): "Done, attempt 1",
        ("WaitGroup", "jobs"): "count 2",
        ("Lease", "l"): "free",
    }
    assert got["namespace"] == kube.namespace
    as_yaml = yaml.safe_load(kube.run("status", "-o", "yaml").stdout)
    assert [o["name"] for o in as_yaml["objects"]] == [o["name"] for o in got["objects"]]
    empty = Target(kube.kubeconfig, fresh_namespace(kube_crds)).run("status")
    assert empty.returncode == 0
    assert "no konductor objects" in empty.stdout
