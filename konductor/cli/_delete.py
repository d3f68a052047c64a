"""``konductor delete KIND NAME``: remove one primitive's object, whatever its state.

The reset for every kind, on every store: a barrier to meet again, a once to
forget, an object whose stored state no longer parses (konductor's errors
about corrupt state point here). Holders and waiters of the object lose it,
so the command shows what is there and asks first (``--yes`` for scripts).
Built on :meth:`konductor.Client.delete`.
"""

from __future__ import annotations

from konductor._errors import KonductorError, NotFound
from konductor._store._kinds import PRIMITIVE_KINDS
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_ERROR, EXIT_OK, Session, UsageError, confirm
from konductor.cli._describe import describe


def register(groups: opt.SubParsers, parent: object) -> None:
    p = groups.add_parser(
        "delete",
        help="delete one object of any kind (asks first; --yes for scripts)",
        description="Deletes the object of a semaphore, mutex, rwmutex, barrier, gate, once, "
        "wait group or Lease, whatever its state: the reset of a barrier or a once, or of an "
        "object whose state no longer parses. Its holders and waiters lose it (a holder "
        "learns at its next renewal). Shows the object and asks for confirmation unless "
        "--yes is given; without a terminal, --yes is required.",
        parents=[parent],  # type: ignore[list-item]
        formatter_class=opt.FORMATTER,
    )
    p.add_argument(
        "kind", metavar="KIND", choices=tuple(PRIMITIVE_KINDS), help=" | ".join(PRIMITIVE_KINDS)
    )
    opt.name(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=delete, parser=p, run=False, read_only=False)


async def delete(s: Session) -> int:
    a = s.args
    kind = PRIMITIVE_KINDS[a.kind]
    client = s.client()
    namespace = s.namespace
    what = f"{a.kind} {a.name!r} in namespace {namespace!r}"
    obj = await s.guard(client.store.get(kind, a.name))  # NotFound: nothing to delete
    if not a.yes:
        try:
            row = describe(obj)
            summary = row.state
            if row.entries:
                summary += f"; {len(row.entries)} holder(s)/waiter(s)"
        except Exception:  # a corrupt object is exactly what one may want to delete
            summary = "its state does not parse"
        if not s.interactive:
            raise UsageError(
                f"not deleting {what} ({summary}): stdin is not a terminal, pass --yes to confirm"
            )
        if not await s.guard(confirm(s, f"delete {what} ({summary})? [y/N] ")):
            s.say("not deleted")
            return EXIT_ERROR
    try:
        await s.guard(client.delete(a.kind, a.name))
    except NotFound:
        raise KonductorError(f"{what} was deleted by someone else meanwhile") from None
    s.emit(
        {"kind": a.kind, "name": a.name, "namespace": namespace, "deleted": True},
        lambda: f"{what} deleted",
    )
    return EXIT_OK
