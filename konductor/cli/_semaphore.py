"""``konductor semaphore create|get|list|delete|acquire|release|run``."""

from __future__ import annotations

import argparse
import asyncio
import logging

from konductor import Permit
from konductor._admin import ObjectStatus
from konductor._errors import AlreadyExists, Conflict, KonductorError, NotFound
from konductor.cli import _options as opt
from konductor.cli._child import run_child
from konductor.cli._common import (
    EXIT_OK,
    JSON,
    Session,
    fields,
    positive,
    table,
)
from konductor.cli._describe import entries_table, entry_json
from konductor.cli._locks import force_release

log = logging.getLogger("konductor.cli")


def register(groups: opt.SubParsers, parent: object) -> None:
    group = opt.group(
        groups,
        "semaphore",
        "at most N holders at once, first come, first served",
        "A semaphore admits at most --permits holders at once (FIFO). The permit "
        "count is the object's spec: `semaphore create` sets it, `kubectl edit` changes it.",
    )
    sub = opt.subcommands(group)

    p = opt.leaf(sub, "create", create, parent, "create a semaphore with N permits")
    opt.name(p)
    p.add_argument("--permits", type=positive, required=True, help="how many holders at once")
    p.add_argument(
        "--update",
        action="store_true",
        help="if it exists with another permit count, change the count (existing holders stay)",
    )

    p = opt.leaf(sub, "get", get, parent, "show a semaphore: permits, holders, waiters")
    opt.name(p)

    opt.leaf(sub, "list", list_, parent, "list the semaphores in the namespace")

    p = opt.leaf(sub, "delete", delete, parent, "delete a semaphore")
    opt.name(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="delete it even while it has holders or waiters (they lose their permits)",
    )

    p = opt.leaf(
        sub,
        "acquire",
        acquire,
        parent,
        "acquire a permit and hold it until interrupted (Ctrl-C releases it)",
        "Waits for a permit, prints its fencing token, then holds it (renewing) until "
        "Ctrl-C / SIGTERM, or for --for seconds. A permit cannot outlive the process "
        "that renews it, so this command stays in the foreground while it holds.",
    )
    _acquire_options(p)
    opt.hold_for(p)

    p = opt.leaf(
        sub,
        "release",
        release,
        parent,
        "force-remove holders or waiters (an operator action)",
        "Removes entries from the semaphore's status: the permit is freed at once and "
        "the next waiter is granted. The process that held it notices at its next "
        "renewal (within ttl/3) and treats the permit as lost. Use it for a holder "
        "that is stuck, not one that is dead (a dead holder expires after its TTL).",
    )
    opt.name(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--holder", metavar="IDENTITY", help="every entry of this identity")
    which.add_argument("--id", metavar="ID", help="the entry with this id (see `semaphore get`)")
    which.add_argument("--all", action="store_true", help="every holder and waiter")

    p = opt.leaf(
        sub,
        "run",
        run,
        parent,
        "run a command while holding a permit (a cluster-wide flock)",
        "Acquires a permit, runs CMD with KONDUCTOR_FENCING_TOKEN and KONDUCTOR_IDENTITY "
        "in its environment, renews while it runs, passes signals on, releases when it "
        "exits and exits with its exit code.",
        run=True,
    )
    _acquire_options(p)
    opt.kill_grace(p)


def _acquire_options(p: argparse.ArgumentParser) -> None:
    opt.name(p)
    p.add_argument(
        "--permits",
        type=positive,
        help="create the semaphore with N permits if it does not exist (the cluster's count wins)",
    )
    p.add_argument("--count", type=positive, default=1, help="how many permits to take (default 1)")
    opt.ttl(p)
    opt.timeout(p, "how long to wait for the permit (default: forever); exit 3 after it")


# -- data -----------------------------------------------------------------------------


def _data(o: ObjectStatus) -> JSON:
    return {
        "name": o.name,
        "namespace": o.namespace,
        "permits": o.capacity if o.capacity is not None else o.spec.get("permits"),
        "inUse": sum(e.count or 1 for e in o.holders),
        "waiting": len(o.waiters),
        "nextToken": o.next_token,
        "holders": [entry_json(e) for e in o.holders],
        "queue": [entry_json(e) for e in o.waiters],
        "problem": o.problem,
    }


def _permit_data(permit: Permit, namespace: str) -> JSON:
    return {
        "name": permit.name,
        "namespace": namespace,
        "token": permit.token,
        "id": permit.id,
        "holder": permit.holder,
        "count": permit.count,
    }


def _render_wait(name: str, identity: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        if o is None:
            return f"semaphore {name!r}: creating it"
        position = next((e.position for e in o.waiters if e.identity == identity), None)
        used = f"{sum(e.count or 1 for e in o.holders)}/{o.capacity or '?'} permits in use"
        if position is not None:
            return f"waiting for semaphore {name!r}: queue position {position} ({used})"
        return f"waiting for semaphore {name!r}: {used}, {len(o.waiters)} waiting"

    return render


# -- commands -------------------------------------------------------------------------


async def create(s: Session) -> int:
    a = s.args
    try:
        action, o = await s.client().admin.create_semaphore(a.name, a.permits, update=a.update)
    except AlreadyExists as exc:  # another count, and no --update
        raise AlreadyExists(f"{exc} (on the command line: --update)") from None
    text = f"semaphore {a.name!r} {action}: permits={a.permits}"
    s.emit({**_data(o), "action": action}, lambda: text)
    return EXIT_OK


async def get(s: Session) -> int:
    o = await s.client().admin.describe("semaphore", s.args.name)

    def render() -> str:
        head = fields(
            [
                ("Name", o.name),
                ("Namespace", o.namespace),
                ("Permits", o.capacity if o.capacity is not None else o.spec.get("permits")),
                ("State", o.summary),
                ("Next token", o.next_token),
            ]
        )
        if o.problem:
            head += f"\n\nProblem: {o.problem}"
        if not o.entries:
            return head
        return head + "\n\n" + entries_table(o, counts=True)

    s.emit(_data(o), render)
    return EXIT_OK


async def list_(s: Session) -> int:
    st = await s.client().admin.status(["semaphore"], strict=True)

    def render() -> str:
        if not st.objects:
            return f"no semaphores in namespace {st.namespace!r}"
        rows = [
            [o.name, o.capacity, sum(e.count or 1 for e in o.holders), len(o.waiters)]
            for o in st.objects
        ]
        return table(["NAME", "PERMITS", "IN-USE", "WAITING"], rows)

    s.emit({"namespace": st.namespace, "items": [_data(o) for o in st.objects]}, render)
    return EXIT_OK


async def delete(s: Session) -> int:
    a = s.args
    try:
        o = await s.client().admin.delete("semaphore", a.name, force=a.force)
    except Conflict as exc:  # it has holders or waiters
        raise KonductorError(f"{exc} (on the command line: --force)") from None
    s.emit(
        {"name": a.name, "namespace": o.namespace, "deleted": True},
        lambda: f"semaphore {a.name!r} deleted",
    )
    return EXIT_OK


async def _ensure_exists(s: Session) -> None:
    """Without --permits a missing semaphore cannot be created: say how, before waiting."""
    if s.args.permits is None:
        try:
            await s.client().admin.describe("semaphore", s.args.name)
        except NotFound:
            raise NotFound(
                f"semaphore {s.args.name!r} does not exist in namespace {s.namespace!r}; "
                "pass --permits N to create it"
            ) from None


async def _acquire(s: Session) -> Permit:
    a = s.args
    await _ensure_exists(s)
    client = s.client()

    async def undo(permit: Permit) -> None:
        await permit.release()

    return await s.watching(
        "semaphore",
        a.name,
        _render_wait(a.name, client.identity),
        client.acquire_semaphore(a.name, a.permits, count=a.count, ttl=a.ttl, timeout=a.timeout),
        undo=undo,
    )


async def acquire(s: Session) -> int:
    permit = await _acquire(s)
    s.emit(
        _permit_data(permit, s.namespace),
        lambda: (
            f"acquired semaphore {permit.name!r}: token {permit.token} "
            f"(count {permit.count}, holder {permit.holder}, id {permit.id})"
        ),
    )
    return await s.hold_grant(permit, "semaphore", "the permit")


async def release(s: Session) -> int:
    return await force_release(s, "semaphore", show="get")


async def run(s: Session) -> int:
    permit = await _acquire(s)
    try:
        s.check_interrupted()
        log.info(
            "acquired semaphore %r (token %d); running %s",
            permit.name,
            permit.token,
            s.args.command,
        )
        return await run_child(
            s,
            s.args.command,
            env={
                "KONDUCTOR_FENCING_TOKEN": str(permit.token),
                "KONDUCTOR_IDENTITY": permit.holder,
            },
            grant=permit,
            grace=s.args.kill_grace,
        )
    finally:
        await asyncio.shield(opt.release_quietly(s, permit))
