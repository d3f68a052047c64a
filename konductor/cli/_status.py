"""``konductor status [--watch]``: every primitive in the namespace, its holders and waiters.

Presentation of :meth:`konductor.Admin.status` and, with ``--watch``, of
:meth:`konductor.Admin.watch_status` (one watch per kind, held by the core):
a new table after every change (``-o json``: one JSON document per line).
"""

from __future__ import annotations

import datetime as dt
import json

from konductor._admin import NamespaceStatus
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_ERROR, EXIT_OK, Interrupted, Session, UsageError, table
from konductor.cli._describe import HEADERS, WATCH_HEADERS, object_json, rows_table


def register(groups: opt.SubParsers, parent: object) -> None:
    p = groups.add_parser(
        "status",
        help="a table of every primitive in the namespace: holders, waiters, expiries",
        description="Lists every konductor object (semaphores, barriers, gates, mutexes, "
        "read-write mutexes, onces, wait groups) and every Lease in the namespace, one "
        "line per holder or waiter, with each entry's TTL and when it was last renewed. "
        "Renewal times come from the writers' clocks and are informational: expiry is "
        "judged by each client on its own clock. With --watch, shows the table again "
        "after every change (and when an entry's time runs out), with each waiter's "
        "queue position and the seconds before this observer may judge an entry "
        "expired; -o json then prints one JSON document per line.",
        parents=[parent],  # type: ignore[list-item]
        formatter_class=opt.FORMATTER,
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="keep watching: print the status again after every change (Ctrl-C stops)",
    )
    p.set_defaults(handler=status, parser=p, run=False, read_only=True)


def _data(st: NamespaceStatus) -> dict[str, object]:
    return {
        "namespace": st.namespace,
        "objects": [object_json(o) for o in st.objects],
        "errors": dict(st.errors),
    }


def _render(st: NamespaceStatus, *, watch: bool) -> str:
    if not st.objects:
        return f"no konductor objects or Leases in namespace {st.namespace!r}"
    headers = WATCH_HEADERS if watch else HEADERS
    return table(headers, rows_table(st.objects, watch=watch))


async def status(s: Session) -> int:
    admin = s.client().admin
    if s.args.watch:
        return await _watch(s)
    st = await admin.status()
    # Show what may be shown; the exit code says it is partial.
    for plural, why in st.errors.items():
        s.error(f"cannot list {plural}: {why}")
    s.emit(_data(st), lambda: _render(st, watch=False))
    return EXIT_ERROR if st.errors else EXIT_OK


async def _watch(s: Session) -> int:
    if s.output == "yaml":
        raise UsageError("--watch prints a table or JSON lines: use -o table or -o json")
    reported: set[str] = set()

    async def follow() -> None:
        async for st in s.client().admin.watch_status():
            for plural, why in st.errors.items():
                if plural not in reported:
                    reported.add(plural)
                    s.error(f"cannot watch {plural}: {why}")
            if s.output == "json":
                print(json.dumps(_data(st), default=str), file=s.out, flush=True)
            else:
                now = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
                print(f"-- {now} namespace {st.namespace}", file=s.out)
                print(_render(st, watch=True) + "\n", file=s.out, flush=True)

    try:
        await s.guard(follow())
    except Interrupted:  # Ctrl-C / SIGTERM is how a watch ends
        return EXIT_OK
    return EXIT_OK
