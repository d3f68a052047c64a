"""``konductor delete KIND NAME`` and ``konductor repair KIND NAME``: an operator's resets.

``delete`` removes one primitive's object, whatever its state: a barrier to
meet again, a once to forget, an object whose stored state no longer parses.
Holders and waiters of the object lose it, so the command shows what is there
and asks first (``--yes`` for scripts). ``repair`` is the gentler fix for an
object whose state does not parse: it removes only the entries that do not
parse and keeps the rest. Both are presentations of the core's admin API
(:meth:`konductor.Admin.delete`, :meth:`konductor.Admin.repair`).
"""

from __future__ import annotations

from konductor._errors import KonductorError, NotFound
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_ERROR, EXIT_OK, Session, UsageError, confirm, positive
from konductor.cli._describe import entries_table, object_json


def register(groups: opt.SubParsers, parent: object) -> None:
    p = opt.kind_command(
        groups,
        parent,
        "delete",
        delete,
        "delete one object of any kind (asks first; --yes for scripts)",
        "Deletes the object of a semaphore, mutex, rwmutex, barrier, gate, once, wait group "
        "or Lease, whatever its state: the reset of a barrier or a once, or of an object "
        "whose state no longer parses. Its holders and waiters lose it (a holder learns at "
        "its next renewal). Shows the object and asks for confirmation unless --yes is "
        "given; without a terminal, --yes is required.",
        read_only=False,
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p = opt.kind_command(
        groups,
        parent,
        "repair",
        repair,
        "fix an object whose stored state does not parse, keeping what does",
        "konductor refuses to act on an object whose stored state does not parse (a holder "
        "that cannot be read is never free capacity), so such an object admits nobody. "
        "`repair` removes only the entries that do not parse (a duplicate id, a malformed "
        "holder or ticket, a malformed barrier arrival or once claim) and keeps every holder "
        "and waiter that does; a removed holder learns at its next renewal that its grant "
        "is gone. What cannot be repaired without guessing (a spec, a Once's state, a wait "
        "group's count) is refused with how to fix it by hand. Nothing is written when the "
        "state parses.",
        read_only=False,
    )
    p.add_argument(
        "--next-token",
        type=positive,
        metavar="N",
        help="only if the fencing-token counter itself does not parse: the next token to "
        "hand out (higher than any this object has handed out)",
    )


async def delete(s: Session) -> int:
    a = s.args
    admin = s.client().admin
    namespace = s.namespace
    what = f"{a.kind} {a.name!r} in namespace {namespace!r}"
    current = await s.guard(admin.describe(a.kind, a.name))  # NotFound: nothing to delete
    if not a.yes:
        summary = current.summary
        if current.problem:
            summary = "its state does not parse"
        elif current.entries:
            summary += f"; {len(current.entries)} holder(s)/waiter(s)"
        if not s.interactive:
            raise UsageError(
                f"not deleting {what} ({summary}): stdin is not a terminal, pass --yes to confirm"
            )
        if not await s.guard(confirm(s, f"delete {what} ({summary})? [y/N] ")):
            s.say("not deleted")
            return EXIT_ERROR
    try:
        await s.guard(admin.delete(a.kind, a.name))
    except NotFound:
        raise KonductorError(f"{what} was deleted by someone else meanwhile") from None
    s.emit(
        {"kind": a.kind, "name": a.name, "namespace": namespace, "deleted": True},
        lambda: f"{what} deleted",
    )
    return EXIT_OK


async def repair(s: Session) -> int:
    a = s.args
    done = await s.guard(s.client().admin.repair(a.kind, a.name, next_token=a.next_token))
    what = f"{a.kind} {a.name!r}"

    def render() -> str:
        if not done.changed:
            return f"{what}: its state parses, nothing to repair"
        lines = [f"repaired {what}:", *(f"  {line}" for line in done.fixed)]
        lines.append(f"now: {done.after.summary}")
        if done.after.entries:
            lines += ["", entries_table(done.after)]
        return "\n".join(lines)

    s.emit(
        {
            "kind": a.kind,
            "name": a.name,
            "namespace": done.after.namespace,
            "repaired": done.changed,
            "fixed": list(done.fixed),
            "dropped": [dict(d) for d in done.dropped],
            "after": object_json(done.after),
        },
        render,
    )
    return EXIT_OK
