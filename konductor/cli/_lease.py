"""``konductor lease acquire|release|status|run``: leader election on a Kubernetes Lease."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging

from konductor._errors import Conflict, NotFound
from konductor._primitives import _lease_state as state
from konductor._primitives._clock import micro_time
from konductor._primitives._lease import Lease
from konductor._store._base import StoredObject
from konductor._store._kinds import LEASE
from konductor.cli import _options as opt
from konductor.cli._child import run_child
from konductor.cli._common import EXIT_OK, JSON, Session, ago, fields

log = logging.getLogger("konductor.cli")


def register(groups: opt.SubParsers, parent: object) -> None:
    group = opt.group(
        groups,
        "lease",
        "leader election on a Kubernetes Lease",
        "Leases are built-in coordination.k8s.io/v1 Leases with client-go's semantics: a Go "
        "service using client-go's leaderelection can contend for the same Lease.",
    )
    sub = opt.subcommands(group)

    p = opt.leaf(
        sub,
        "acquire",
        acquire,
        parent,
        "become the holder and hold until interrupted (Ctrl-C releases)",
        "Waits until this process holds the Lease, prints its fencing token "
        "(leaseTransitions), then holds it (renewing) until Ctrl-C / SIGTERM, or for "
        "--for seconds. Leadership cannot outlive the process that renews it.",
    )
    _acquire_options(p)
    opt.hold_for(p)

    p = opt.leaf(
        sub,
        "release",
        release,
        parent,
        "force-release a Lease (an operator action)",
        "Clears the Lease's holder as client-go's ReleaseOnCancel does, so a waiting "
        "candidate takes over at once. The process that held it notices at its next "
        "renewal (within ttl/3) and treats leadership as lost.",
    )
    opt.name(p)
    p.add_argument("--holder", metavar="IDENTITY", help="release only if this identity holds it")

    p = opt.leaf(sub, "status", status, parent, "show a Lease's holder, times and transitions")
    opt.name(p)

    p = opt.leaf(
        sub,
        "run",
        run,
        parent,
        "run a command while holding the Lease (only one at a time, cluster-wide)",
        "Acquires the Lease, runs CMD with KONDUCTOR_FENCING_TOKEN and KONDUCTOR_IDENTITY "
        "in its environment, renews while it runs, passes signals on, releases when it "
        "exits and exits with its exit code.",
        run=True,
    )
    _acquire_options(p)
    opt.kill_grace(p)


def _acquire_options(p: argparse.ArgumentParser) -> None:
    opt.name(p)
    opt.ttl(p)
    opt.timeout(p, "how long to wait for the Lease (default: forever); exit 3 after it")


def _data(obj: StoredObject, namespace: str) -> JSON:
    rec = state.parse(obj.spec)
    return {
        "name": obj.name,
        "namespace": namespace,
        "held": rec.holder is not None,
        "holder": rec.holder,
        "leaseDurationSeconds": rec.duration,
        "acquireTime": rec.acquire_time,
        "renewTime": rec.renew_time,
        "leaseTransitions": rec.transitions,
    }


def _lease_data(lease: Lease, namespace: str) -> JSON:
    return {
        "name": lease.name,
        "namespace": namespace,
        "token": lease.token,
        "holder": lease.holder,
        "leaseDurationSeconds": lease.ttl,
    }


def _render_wait(name: str) -> opt.Render:
    def render(obj: StoredObject | None) -> str:
        rec = state.parse(obj.spec) if obj is not None else None
        if rec is None or rec.holder is None:
            return f"lease {name!r}: free, taking it"
        return (
            f"waiting for lease {name!r}: held by {rec.holder} "
            f"(duration {rec.duration}s, renewed {ago(rec.renew_time)})"
        )

    return render


async def _acquire(s: Session) -> Lease:
    a = s.args
    client = s.client()

    async def undo(lease: Lease) -> None:
        await lease.release()

    return await s.watching(
        LEASE,
        a.name,
        _render_wait(a.name),
        client.acquire_lease(a.name, ttl=a.ttl, timeout=a.timeout),
        undo=undo,
    )


async def acquire(s: Session) -> int:
    lease = await _acquire(s)
    s.emit(
        _lease_data(lease, s.namespace),
        lambda: f"acquired lease {lease.name!r}: token {lease.token} (holder {lease.holder})",
    )
    return await s.hold_grant(lease, "lease", "leadership")


async def release(s: Session) -> int:
    a = s.args
    store = s.store()
    released: str | None = None
    while True:
        obj = await store.get(LEASE, a.name)
        rec = state.parse(obj.spec)
        if rec.holder is None:
            if a.holder is not None:
                raise NotFound(f"lease {a.name!r} is not held (by {a.holder} or anyone)")
            break
        if a.holder is not None and rec.holder != a.holder:
            raise NotFound(f"lease {a.name!r} is held by {rec.holder}, not by {a.holder}")
        out = state.release(obj.spec, rec.holder, None, micro_time(dt.datetime.now(dt.UTC)))
        assert out.spec is not None
        try:
            obj = await store.replace_spec(LEASE, a.name, out.spec, version=obj.version)
        except Conflict:
            continue
        released = rec.holder
        break
    s.emit(
        {**_data(obj, store.namespace), "released": released},
        lambda: (
            f"lease {a.name!r} released (was held by {released})"
            if released
            else f"lease {a.name!r} is not held: nothing to release"
        ),
    )
    return EXIT_OK


async def status(s: Session) -> int:
    store = s.store()
    obj = await store.get(LEASE, s.args.name)
    data = _data(obj, store.namespace)
    s.emit(
        data,
        lambda: fields(
            [
                ("Name", obj.name),
                ("Namespace", store.namespace),
                ("Holder", data["holder"] or "(none)"),
                ("Duration", f"{data['leaseDurationSeconds']}s"),
                ("Acquired", f"{data['acquireTime']} ({ago(data['acquireTime'])})"),
                ("Renewed", f"{data['renewTime']} ({ago(data['renewTime'])})"),
                ("Transitions", data["leaseTransitions"]),
            ]
        ),
    )
    return EXIT_OK


async def run(s: Session) -> int:
    lease = await _acquire(s)
    try:
        s.check_interrupted()
        log.info(
            "acquired lease %r (token %d); running %s", lease.name, lease.token, s.args.command
        )
        return await run_child(
            s,
            s.args.command,
            env={"KONDUCTOR_FENCING_TOKEN": str(lease.token), "KONDUCTOR_IDENTITY": lease.holder},
            grant=lease,
            grace=s.args.kill_grace,
        )
    finally:
        await asyncio.shield(opt.release_quietly(s, lease))
