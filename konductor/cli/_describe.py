"""``konductor describe KIND NAME``, and how any object reads to a person and to a script.

Presentation only: every value comes from the core's admin API
(:class:`konductor.ObjectStatus`, built by the primitives' own parsers). One
object reads as a ``state`` line and its ``entries`` (holders, waiters with
their queue position, the once's runner, the Lease's holder), each with its
TTL, its last renewal (the writer's clock: informational) and the seconds
left before this observer may judge it expired.
"""

from __future__ import annotations

from typing import Any

from konductor._admin import EntryStatus, ObjectStatus
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_OK, JSON, Session, fields, span, table, ttl_text

HEADERS = ("KIND", "NAME", "STATE", "ROLE", "IDENTITY", "TOKEN", "TTL", "RENEWED")
WATCH_HEADERS = (*HEADERS[:4], "POS", *HEADERS[4:], "EXPIRES")


def register(groups: opt.SubParsers, parent: object) -> None:
    opt.kind_command(
        groups,
        parent,
        "describe",
        describe_cmd,
        "one object's full story: holders, queue, tokens, last transitions",
        "Shows one object of any kind: its state, its holders and its waiters in queue "
        "order (with their position), fencing tokens, TTLs, when each entry was last "
        "renewed (the writer's clock, informational) and when this observer could first "
        "judge it expired, and the transitions the object records. An object whose stored "
        "state does not parse is described too, with what is wrong (see `konductor repair`).",
        read_only=True,
    )


def role(entry: EntryStatus) -> str:
    """``holder``, ``waiting``, ``runner``; with the mode of a read-write mutex entry."""
    label = "waiting" if entry.role == "waiter" else entry.role
    return f"{label} ({entry.mode})" if entry.mode in ("read", "write") else label


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def entry_json(e: EntryStatus) -> JSON:
    return {
        "role": role(e),
        "identity": e.identity,
        "id": e.id,
        "token": e.token,
        "count": e.count,
        "mode": e.mode,
        "position": e.position,
        "priority": e.priority,
        "ttlSeconds": e.ttl,
        "renewals": e.renewals,
        "renewedAt": e.renewed_at,
        "renewedAgoSeconds": _seconds(e.renewed_ago),
        "expiresInSeconds": _seconds(e.expires_in),
    }


def ago_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(-seconds)}"


def cells(e: EntryStatus) -> list[object]:
    return [
        role(e),
        e.identity or "-",
        "-" if e.token is None else e.token,
        ttl_text(e.ttl),
        ago_text(e.renewed_ago),
    ]


def object_json(o: ObjectStatus) -> JSON:
    return {
        "kind": o.kind,
        "name": o.name,
        "state": o.summary,
        "entries": [entry_json(e) for e in o.entries],
        "nextToken": o.next_token,
        "capacity": o.capacity,
        "transitions": [{"what": t.what, "at": t.at, "by": t.by} for t in o.transitions],
        "problem": o.problem,
        "spec": dict(o.spec),
        "status": dict(o.status),
    }


def rows_table(objects: tuple[ObjectStatus, ...], *, watch: bool = False) -> list[list[object]]:
    """Table rows: one per entry; an object's own columns only on its first line."""
    out: list[list[object]] = []
    for o in objects:
        head: list[object] = [o.kind, o.name, o.summary]
        blank = ["", "", ""]
        if not o.entries:
            out.append([*head, *[""] * (len(WATCH_HEADERS if watch else HEADERS) - 3)])
        for i, e in enumerate(o.entries):
            row = [*(head if i == 0 else blank), *cells(e)]
            if watch:
                row.insert(4, "-" if e.position is None else e.position)
                row.append("-" if e.expires_in is None else span(e.expires_in))
            out.append(row)
    return out


def entries_table(o: ObjectStatus, *, ids: bool = True, counts: bool = False) -> str:
    """The holders and waiters of one object (holders first, then the queue in order)."""
    ranked = any(e.priority for e in o.entries)  # a column only where priorities are used
    headers: list[str] = ["ROLE", "POS", "IDENTITY"]
    headers += ["ID"] if ids else []
    headers += ["COUNT"] if counts else []
    headers += ["PRIORITY"] if ranked else []
    headers += ["TOKEN", "TTL", "RENEWED", "EXPIRES"]
    rows = []
    for e in o.entries:
        row: list[Any] = [role(e), "-" if e.position is None else e.position, e.identity]
        row += [e.id] if ids else []
        row += [e.count] if counts else []
        row += [e.priority or 0] if ranked else []
        row += [
            "-" if e.token is None else e.token,
            ttl_text(e.ttl),
            ago_text(e.renewed_ago),
            "-" if e.expires_in is None else f"in {span(e.expires_in)}",
        ]
        rows.append(row)
    return table(headers, rows)


def describe_text(o: ObjectStatus) -> str:
    pairs: list[tuple[str, object]] = [
        ("Kind", o.kind),
        ("Name", o.name),
        ("Namespace", o.namespace),
        ("State", o.summary),
    ]
    if o.capacity is not None:
        pairs.append(("Capacity", o.capacity))
    if o.next_token is not None:
        pairs.append(("Next token" if o.kind != "Lease" else "Transitions", o.next_token))
    pairs.append(("Holders", len(o.holders)))
    if o.kind in ("Semaphore", "Mutex", "RWMutex"):
        pairs.append(("Waiting", len(o.waiters)))
    text = fields(pairs)
    if o.problem:
        text += (
            f"\n\nProblem: {o.problem}\n(`konductor repair {o.primitive} {o.name}` removes "
            "what does not parse and keeps the rest)"
        )
    if o.entries:
        text += "\n\n" + entries_table(o, counts=o.kind == "Semaphore")
    if o.transitions:
        rows = [[t.what, t.at or "-", t.by or "-"] for t in o.transitions]
        text += "\n\nTransitions:\n" + table(["WHAT", "AT", "BY"], rows)
    return text


async def describe_cmd(s: Session) -> int:
    o = await s.client().admin.describe(s.args.kind, s.args.name)
    s.emit({**object_json(o), "namespace": o.namespace}, lambda: describe_text(o))
    return EXIT_OK
