"""``konductor status``: every primitive in the namespace, with holders, waiters and expiries."""

from __future__ import annotations

from konductor._errors import Forbidden, KonductorError
from konductor._store._base import StoredObject
from konductor._store._kinds import CUSTOM_KINDS, GATE, LEASE
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_ERROR, EXIT_OK, Session, table
from konductor.cli._describe import HEADERS, Row, describe, rows_table


def register(groups: opt.SubParsers, parent: object) -> None:
    p = groups.add_parser(
        "status",
        help="a table of every primitive in the namespace: holders, waiters, expiries",
        description="Lists every konductor object (semaphores, barriers, gates, mutexes, "
        "read-write mutexes, onces, wait groups) and every Lease in the namespace, one "
        "line per holder or waiter, with each entry's TTL and when it was last renewed. "
        "Renewal times come from the writers' clocks and are informational: expiry is "
        "judged by each client on its own clock.",
        parents=[parent],  # type: ignore[list-item]
        formatter_class=opt.FORMATTER,
    )
    p.set_defaults(handler=status, parser=p, run=False, read_only=True)


async def _gate_row(s: Session, obj: StoredObject) -> Row:
    """A gate's row, its conditions evaluated as waiters would (``open`` = flag or all met)."""
    row = describe(obj)
    if "conditions:" not in row.state:
        return row
    try:
        info = await s.client().gate_status(obj.name)
    except KonductorError:
        return row
    pending = [f"{c.condition.type}/{c.condition.name}" for c in info.pending]
    if info.open:
        row.state = "open" if info.flag else "open (all conditions met)"
    else:
        row.state = "closed (waiting for " + ", ".join(pending) + ")"
    return row


async def status(s: Session) -> int:
    store = s.store()
    rows: list[Row] = []
    failed = False
    for kind in (*CUSTOM_KINDS, LEASE):
        try:
            objects = (await store.list(kind)).items
        except Forbidden as exc:  # show what may be shown; the exit code says it is partial
            s.error(f"cannot list {kind.plural}: {exc}")
            failed = True
            continue
        for obj in objects:
            rows.append(await _gate_row(s, obj) if kind == GATE else describe(obj))

    def render() -> str:
        if not rows:
            return f"no konductor objects or Leases in namespace {store.namespace!r}"
        return table(HEADERS, rows_table(rows))

    s.emit({"namespace": store.namespace, "objects": [r.to_json() for r in rows]}, render)
    return EXIT_ERROR if failed else EXIT_OK
