"""``konductor once run|status|reset``: run a command once, cluster-wide.

The first invocation claims the Once and runs the command; concurrent ones
wait and exit 0 when it succeeds; later ones exit 0 at once without running
it. A non-zero exit is recorded as Failed and the next invocation runs the
command again. A runner stopped by a signal abandons its claim instead (the
state returns to Pending) so that a waiting invocation takes over at once.
"""

from __future__ import annotations

import logging

from konductor import OnceStatus
from konductor._admin import ObjectStatus
from konductor._errors import InvalidArgument, InvalidName
from konductor.cli import _options as opt
from konductor.cli._child import run_child
from konductor.cli._common import EXIT_OK, JSON, Session, UsageError, fields

log = logging.getLogger("konductor.cli")


class ChildFailed(Exception):
    """The command exited non-zero: recorded as the Once's failure."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the command exited with code {code}")
        self.code = code


class _Abandoned(BaseException):
    """The command was stopped by a signal: abandon the claim, record nothing.

    A BaseException, so that the once runner neither records it as a failure
    (it records ``Exception``) nor mistakes it for a lost claim; it abandons.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def register(groups: opt.SubParsers, parent: object) -> None:
    group = opt.group(
        groups,
        "once",
        "run a command once, cluster-wide",
        "A Once records whether its work has been done: Pending, Running, Done or Failed.",
    )
    sub = opt.subcommands(group)
    p = opt.leaf(
        sub,
        "run",
        run,
        parent,
        "run a command unless it already ran successfully (anywhere)",
        "The first caller runs CMD (renewing its claim while it runs) and exits with its "
        "code: 0 records Done, anything else records Failed (the next caller runs it "
        "again). Concurrent callers wait and exit 0 when it is Done (1 if that run "
        "failed); callers after a success exit 0 without running CMD. If the runner "
        "dies, a waiter takes over after --ttl.",
        run=True,
    )
    opt.name(p)
    opt.ttl(p)
    opt.timeout(p, "how long to wait for another caller's run (default: forever); exit 3")
    opt.kill_grace(p)

    p = opt.leaf(sub, "status", status, parent, "show a Once's state, attempt and runner")
    opt.name(p)

    p = opt.leaf(
        sub,
        "reset",
        reset,
        parent,
        "make the next `once run` run the command again",
        "Takes the Once back to Pending (the attempt counter, its fencing token, is kept). "
        "A run in progress is left alone unless --force, which revokes it: its runner "
        "stops its command at its next renewal.",
    )
    opt.name(p)
    p.add_argument("--force", action="store_true", help="also revoke a run in progress")


def _data(st: OnceStatus, namespace: str) -> JSON:
    return {
        "name": st.name,
        "namespace": namespace,
        "state": st.state,
        "attempt": st.attempt,
        "runner": st.runner,
        "error": st.error,
        "startedAt": st.started_at,
        "doneAt": st.done_at,
        "failedAt": st.failed_at,
    }


def _text(st: OnceStatus, namespace: str) -> str:
    pairs: list[tuple[str, object]] = [
        ("Name", st.name),
        ("Namespace", namespace),
        ("State", st.state),
        ("Attempt", st.attempt),
        ("Runner", st.runner),
    ]
    for label, value in (
        ("Started", st.started_at),
        ("Done", st.done_at),
        ("Failed", st.failed_at),
        ("Error", st.error),
    ):
        if value:
            pairs.append((label, value))
    return fields(pairs)


def _render_wait(name: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        if o is None:
            return f"once {name!r}: claiming it"
        if o.holders:  # a runner holds the claim
            return (
                f"waiting for once {name!r}: running on {o.holders[0].identity} "
                f"(attempt {o.next_token})"
            )
        return f"once {name!r}: {o.summary}"

    return render


async def run(s: Session) -> int:
    a = s.args
    client = s.client()

    async def fn() -> int:
        s.progress.stop()  # the command owns the terminal now
        code = await run_child(
            s,
            a.command,
            env={"KONDUCTOR_IDENTITY": client.identity},
            grant=None,
            grace=a.kill_grace,
        )
        if code != 0 and s.child_signal is not None:
            raise _Abandoned(code)
        if code != 0:
            raise ChildFailed(code)
        return code

    try:
        result = await s.watching(
            "once",
            a.name,
            _render_wait(a.name),
            client.once(a.name, fn, ttl=a.ttl, timeout=a.timeout),
        )
    except ChildFailed as exc:
        log.info("once %r: recorded as Failed (exit code %d)", a.name, exc.code)
        return exc.code
    except _Abandoned as exc:
        s.say(f"once {a.name!r}: the command was stopped by a signal; the run was abandoned")
        return exc.code
    if result is None:  # Done by another caller (now or earlier): the command did not run here
        st = await client.once_status(a.name)
        s.say(f"once {a.name!r} is done (by {st.runner}); not running the command")
    return EXIT_OK


async def status(s: Session) -> int:
    st = await s.client().once_status(s.args.name)
    s.emit(_data(st, s.namespace), lambda: _text(st, s.namespace))
    return EXIT_OK


async def reset(s: Session) -> int:
    try:
        before = await s.client().reset_once(s.args.name, force=s.args.force)
    except InvalidName:
        raise
    except InvalidArgument as exc:  # a run in progress: the core says force=True
        raise UsageError(f"{exc} (on the command line: pass --force)") from exc
    s.emit(
        {**_data(before, s.namespace), "reset": True},
        lambda: (
            f"once {s.args.name!r} reset to Pending (was {before.state}, attempt {before.attempt})"
        ),
    )
    return EXIT_OK
