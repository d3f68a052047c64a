"""``konductor mutex|rwmutex acquire|run|status|release``, ``waitgroup add|done|wait|status``.

The mutex and the read-write mutex are queues like the semaphore (holders,
FIFO waiters, fencing tokens), so they share its shapes: ``acquire`` holds in
the foreground until Ctrl-C or ``--for``, ``run`` holds around a command (a
cluster-wide ``flock``), ``release`` is the operator's force-release of a
stuck holder, ``status`` shows holders and waiters. Everything goes through
:class:`konductor.Client` and its admin API (``release`` is
:meth:`konductor.Admin.force_release`); the CLI reads and writes no stored
state itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable

from konductor import Lock
from konductor._admin import ObjectStatus
from konductor._errors import NotFound
from konductor._store._kinds import MUTEX, RWMUTEX, Kind
from konductor.cli import _options as opt
from konductor.cli._child import run_child
from konductor.cli._common import EXIT_OK, JSON, Session, fields, positive
from konductor.cli._describe import entries_table, entry_json, role

log = logging.getLogger("konductor.cli")


def register(groups: opt.SubParsers, parent: object) -> None:
    _lock_group(
        groups,
        parent,
        "mutex",
        "one holder at a time, first come, first served",
        "A mutex admits one holder at a time, in FIFO order, each with a fencing token.",
        rw=False,
    )
    _lock_group(
        groups,
        parent,
        "rwmutex",
        "many readers or one writer, first come, first served",
        "A read-write mutex admits many readers at once or one writer, in FIFO order (a "
        "queued writer is not overtaken by later readers). Choose the mode with --mode.",
        rw=True,
    )
    _waitgroup_group(groups, parent)


# -- mutex and rwmutex ----------------------------------------------------------------


def _lock_group(
    groups: opt.SubParsers, parent: object, noun: str, help: str, description: str, *, rw: bool
) -> None:
    group = opt.group(groups, noun, help, description)
    sub = opt.subcommands(group)
    kind = RWMUTEX if rw else MUTEX

    def mode_option(p: argparse.ArgumentParser) -> None:
        if rw:
            p.add_argument(
                "--mode",
                choices=("read", "write"),
                required=True,
                help="read (shared with other readers) or write (exclusive)",
            )

    def acquire_options(p: argparse.ArgumentParser) -> None:
        opt.name(p)
        mode_option(p)
        opt.ttl(p)
        opt.timeout(p, f"how long to wait for the {noun} (default: forever); exit 3 after it")

    p = opt.leaf(
        sub,
        "acquire",
        _acquire_cmd(noun, kind),
        parent,
        f"lock the {noun} and hold it until interrupted (Ctrl-C releases it)",
        f"Waits for the {noun}, prints its fencing token, then holds it (renewing) until "
        "Ctrl-C / SIGTERM, or for --for seconds. A lock cannot outlive the process that "
        "renews it, so this command stays in the foreground while it holds.",
    )
    acquire_options(p)
    opt.hold_for(p)

    p = opt.leaf(
        sub,
        "run",
        _run_cmd(noun, kind),
        parent,
        f"run a command while holding the {noun} (a cluster-wide flock)",
        f"Locks the {noun}, runs CMD with KONDUCTOR_FENCING_TOKEN and KONDUCTOR_IDENTITY in "
        "its environment, renews while it runs, passes signals on, releases when it exits "
        "and exits with its exit code.",
        run=True,
    )
    acquire_options(p)
    opt.kill_grace(p)

    p = opt.leaf(sub, "status", _status_cmd(noun, kind), parent, f"show a {noun}: holders, waiters")
    opt.name(p)

    p = opt.leaf(
        sub,
        "release",
        _release_cmd(noun),
        parent,
        "force-remove holders or waiters (an operator action)",
        f"Removes entries from the {noun}'s status: the lock is freed at once and the next "
        "waiter is granted. The process that held it notices at its next renewal (within "
        "ttl/3) and treats the lock as lost. Use it for a holder that is stuck, not one "
        "that is dead (a dead holder expires after its TTL).",
    )
    opt.name(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--holder", metavar="IDENTITY", help="every entry of this identity")
    which.add_argument("--id", metavar="ID", help=f"the entry with this id (see `{noun} status`)")
    which.add_argument("--all", action="store_true", help="every holder and waiter")


def _lock_data(lock: Lock, namespace: str) -> JSON:
    return {
        "name": lock.name,
        "namespace": namespace,
        "mode": lock.mode,
        "token": lock.token,
        "holder": lock.holder,
        "id": lock.id,
    }


def _render_wait(noun: str, name: str, identity: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        if o is None:
            return f"{noun} {name!r}: free, taking it"
        place = next((e.position for e in o.waiters if e.identity == identity), None)
        where = f"position {place} of {len(o.waiters)}" if place is not None else "joining"
        return f"waiting for {noun} {name!r}: {len(o.holders)} holder(s), {where} in the queue"

    return render


async def _acquire(s: Session, noun: str, kind: Kind) -> Lock:
    a = s.args
    client = s.client()
    if kind == MUTEX:
        aw = client.acquire_mutex(a.name, ttl=a.ttl, timeout=a.timeout)
    elif a.mode == "read":
        aw = client.acquire_read_lock(a.name, ttl=a.ttl, timeout=a.timeout)
    else:
        aw = client.acquire_write_lock(a.name, ttl=a.ttl, timeout=a.timeout)

    async def undo(lock: Lock) -> None:
        await lock.release()

    return await s.watching(
        noun, a.name, _render_wait(noun, a.name, client.identity), aw, undo=undo
    )


def _acquire_cmd(noun: str, kind: Kind) -> Callable[[Session], Awaitable[int]]:
    async def acquire(s: Session) -> int:
        lock = await _acquire(s, noun, kind)
        s.emit(
            _lock_data(lock, s.namespace),
            lambda: (
                f"acquired {noun} {lock.name!r}"
                + (f" for {lock.mode}" if kind == RWMUTEX else "")
                + f": token {lock.token} (holder {lock.holder}, id {lock.id})"
            ),
        )
        return await s.hold_grant(lock, noun, "the lock")

    return acquire


def _run_cmd(noun: str, kind: Kind) -> Callable[[Session], Awaitable[int]]:
    async def run(s: Session) -> int:
        lock = await _acquire(s, noun, kind)
        try:
            s.check_interrupted()
            log.info(
                "acquired %s %r (token %d); running %s", noun, lock.name, lock.token, s.args.command
            )
            return await run_child(
                s,
                s.args.command,
                env={"KONDUCTOR_FENCING_TOKEN": str(lock.token), "KONDUCTOR_IDENTITY": lock.holder},
                grant=lock,
                grace=s.args.kill_grace,
            )
        finally:
            await asyncio.shield(opt.release_quietly(s, lock))

    return run


def _status_cmd(noun: str, kind: Kind) -> Callable[[Session], Awaitable[int]]:
    async def status(s: Session) -> int:
        o = await s.client().admin.describe(noun, s.args.name)

        def render() -> str:
            head = fields(
                [
                    ("Name", o.name),
                    ("Namespace", o.namespace),
                    ("State", o.summary),
                    ("Next token", o.next_token),
                ]
            )
            if o.problem:
                head += f"\n\nProblem: {o.problem}"
            if not o.entries:
                return head
            return head + "\n\n" + entries_table(o)

        s.emit(
            {
                "name": o.name,
                "namespace": o.namespace,
                "state": o.summary,
                "holders": [entry_json(e) for e in o.holders],
                "queue": [entry_json(e) for e in o.waiters],
                "nextToken": o.next_token,
                "problem": o.problem,
            },
            render,
        )
        return EXIT_OK

    return status


def _release_cmd(noun: str) -> Callable[[Session], Awaitable[int]]:
    async def release(s: Session) -> int:
        return await force_release(s, noun)

    return release


async def force_release(s: Session, noun: str, *, show: str = "status") -> int:
    """Remove the holders / waiters chosen by --holder, --id or --all, granting the next ones.

    Shared by ``semaphore release``, ``mutex release`` and ``rwmutex release``;
    ``show`` names the command that lists the entries (for the error message).
    The core (:meth:`konductor.Admin.force_release`) decides and writes.
    """
    a = s.args
    admin = s.client().admin
    chosen = await admin.force_release(noun, a.name, holder=a.holder, id=a.id, everyone=a.all)
    if not chosen and not a.all:
        which = f"--holder {a.holder}" if a.holder is not None else f"--id {a.id}"
        raise NotFound(
            f"no holder or waiter of {noun} {a.name!r} matches {which} "
            f"(see `konductor {noun} {show} {a.name}`)"
        )

    def render() -> str:
        if not chosen:
            return f"{noun} {a.name!r} has no holders or waiters: nothing removed"
        lines = [
            f"removed {len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'} "
            f"from {noun} {a.name!r}:"
        ]
        lines += [
            f"  {role(e)} {e.identity} (id {e.id}"
            + (f", token {e.token})" if e.token is not None else ")")
            for e in chosen
        ]
        return "\n".join(lines)

    s.emit(
        {"name": a.name, "namespace": s.namespace, "removed": [entry_json(e) for e in chosen]},
        render,
    )
    return EXIT_OK


# -- wait group -----------------------------------------------------------------------


def _waitgroup_group(groups: opt.SubParsers, parent: object) -> None:
    group = opt.group(
        groups,
        "waitgroup",
        "a cluster-wide counter of outstanding work; wait until it reaches zero",
        "A wait group counts outstanding work: `add` raises the counter (creating the group), "
        "each finished piece calls `done`, and `wait` returns once the counter is zero.",
    )
    sub = opt.subcommands(group)

    p = opt.leaf(sub, "add", wg_add, parent, "add N to the counter (created if missing)")
    opt.name(p)
    p.add_argument("delta", metavar="N", nargs="?", type=positive, default=1, help="default 1")

    p = opt.leaf(sub, "done", wg_done, parent, "one piece of work is done: subtract 1")
    opt.name(p)

    p = opt.leaf(sub, "wait", wg_wait, parent, "wait until the counter is zero")
    opt.name(p)
    opt.timeout(p, "how long to wait (default: forever); exit 3 after it")

    p = opt.leaf(sub, "status", wg_status, parent, "show the counter")
    opt.name(p)


async def wg_add(s: Session) -> int:
    a = s.args
    count = await s.guard(s.client().waitgroup_add(a.name, a.delta))
    s.emit(
        {"name": a.name, "namespace": s.namespace, "count": count},
        lambda: f"waitgroup {a.name!r}: {count} outstanding",
    )
    return EXIT_OK


async def wg_done(s: Session) -> int:
    a = s.args
    count = await s.guard(s.client().waitgroup_done(a.name))
    s.emit(
        {"name": a.name, "namespace": s.namespace, "count": count},
        lambda: f"waitgroup {a.name!r}: {count} outstanding",
    )
    return EXIT_OK


def _render_count(name: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        state = o.summary if o is not None else "does not exist yet"
        return f"waiting for waitgroup {name!r}: {state}"

    return render


async def wg_wait(s: Session) -> int:
    a = s.args
    info = await s.watching(
        "waitgroup",
        a.name,
        _render_count(a.name),
        s.client().waitgroup_wait(a.name, timeout=a.timeout),
    )
    s.emit(
        {"name": a.name, "namespace": s.namespace, "count": info.count},
        lambda: f"waitgroup {a.name!r}: all done",
    )
    return EXIT_OK


async def wg_status(s: Session) -> int:
    a = s.args
    info = await s.client().waitgroup_status(a.name)
    s.emit(
        {"name": a.name, "namespace": s.namespace, "count": info.count},
        lambda: fields([("Name", a.name), ("Namespace", s.namespace), ("Outstanding", info.count)]),
    )
    return EXIT_OK
