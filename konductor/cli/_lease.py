"""``konductor lease acquire|release|status|run``: leader election on a Kubernetes Lease."""

from __future__ import annotations

import argparse
import asyncio
import logging

from konductor import Lease
from konductor._admin import ObjectStatus, Transition
from konductor.cli import _options as opt
from konductor.cli._child import run_child
from konductor.cli._common import EXIT_OK, JSON, Session, fields, ttl_text
from konductor.cli._describe import ago_text

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


def _transition(o: ObjectStatus, what: str) -> Transition | None:
    return next((t for t in o.transitions if t.what == what), None)


def _when(t: Transition | None) -> str:
    return "-" if t is None else f"{t.at} ({ago_text(t.ago)})"


def _data(o: ObjectStatus) -> JSON:
    holder = o.holders[0] if o.holders else None
    acquired = _transition(o, "acquired")
    renewed = _transition(o, "renewed")
    return {
        "name": o.name,
        "namespace": o.namespace,
        "held": holder is not None,
        "holder": holder.identity if holder else None,
        "leaseDurationSeconds": int(holder.ttl) if holder and holder.ttl is not None else None,
        "acquireTime": acquired.at if acquired else None,
        "renewTime": renewed.at if renewed else None,
        "leaseTransitions": o.next_token,
        "expiresInSeconds": holder.expires_in if holder else None,
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
    def render(o: ObjectStatus | None) -> str:
        if o is None or not o.holders:
            return f"lease {name!r}: free, taking it"
        h = o.holders[0]
        return (
            f"waiting for lease {name!r}: held by {h.identity} "
            f"(duration {ttl_text(h.ttl)}, renewed {ago_text(h.renewed_ago)})"
        )

    return render


async def _acquire(s: Session) -> Lease:
    a = s.args
    client = s.client()

    async def undo(lease: Lease) -> None:
        await lease.release()

    return await s.watching(
        "lease",
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
    admin = s.client().admin
    removed = await admin.force_release("lease", a.name, holder=a.holder, everyone=a.holder is None)
    released = removed[0].identity if removed else None
    o = await admin.describe("lease", a.name)
    s.emit(
        {**_data(o), "released": released},
        lambda: (
            f"lease {a.name!r} released (was held by {released})"
            if released
            else f"lease {a.name!r} is not held: nothing to release"
        ),
    )
    return EXIT_OK


async def status(s: Session) -> int:
    o = await s.client().admin.describe("lease", s.args.name)
    data = _data(o)
    s.emit(
        data,
        lambda: fields(
            [
                ("Name", o.name),
                ("Namespace", o.namespace),
                ("Holder", data["holder"] or "(none)"),
                ("Duration", f"{data['leaseDurationSeconds']}s"),
                ("Acquired", _when(_transition(o, "acquired"))),
                ("Renewed", _when(_transition(o, "renewed"))),
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
