"""argparse building blocks shared by the command groups, so every command reads alike."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeAlias

from konductor._admin import ObjectStatus
from konductor._engine import _validate as check
from konductor._engine._grant import Grant
from konductor._engine._runtime import DEFAULT_TTL
from konductor._errors import InvalidArgument, KonductorError
from konductor.cli._common import Session, duration

Handler = Callable[[Session], Awaitable[int]]
Render = Callable[[ObjectStatus | None], str]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Commands that only read: they never create a store (a mistyped local path
#: must not become a new, empty database), see ``Session.store``.
READ_ONLY = frozenset({"get", "list", "status"})

FORMATTER = argparse.HelpFormatter
RAW = argparse.RawDescriptionHelpFormatter


def group(groups: SubParsers, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A command group (``konductor semaphore``); it needs a subcommand."""
    return groups.add_parser(name, help=help, description=description, formatter_class=FORMATTER)


def subcommands(parser: argparse.ArgumentParser) -> SubParsers:
    return parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)


def leaf(
    sub: SubParsers,
    name: str,
    handler: Handler,
    parent: object,
    help: str,
    description: str | None = None,
    *,
    run: bool = False,
    raw: bool = False,
) -> argparse.ArgumentParser:
    """A command: ``handler(session)`` runs it. ``run=True``: it takes ``-- CMD ...``."""
    assert isinstance(parent, argparse.ArgumentParser)
    usage = None
    if run:
        usage = "%(prog)s [options] NAME -- CMD [ARG ...]"
    p = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        parents=[parent],
        formatter_class=RAW if raw else FORMATTER,
        usage=usage,
    )
    p.set_defaults(handler=handler, parser=p, run=run, read_only=name in READ_ONLY)
    return p


def kind_command(
    groups: SubParsers,
    parent: object,
    command: str,
    handler: Handler,
    help: str,
    description: str,
    *,
    read_only: bool,
) -> argparse.ArgumentParser:
    """A top-level command on one object of any kind: ``konductor COMMAND KIND NAME``."""
    from konductor._store._kinds import PRIMITIVE_KINDS

    assert isinstance(parent, argparse.ArgumentParser)
    p = groups.add_parser(
        command, help=help, description=description, parents=[parent], formatter_class=FORMATTER
    )
    p.add_argument(
        "kind", metavar="KIND", choices=tuple(PRIMITIVE_KINDS), help=" | ".join(PRIMITIVE_KINDS)
    )
    name(p)
    p.set_defaults(handler=handler, parser=p, run=False, read_only=read_only)
    return p


def name(p: argparse.ArgumentParser, what: str = "the object's name (a DNS-1123 name)") -> None:
    p.add_argument("name", metavar="NAME", help=what)


#: The command-line flag of each core parameter an option feeds.
FLAGS: Mapping[str, str] = {
    "ttl": "--ttl",
    "timeout": "--timeout",
    "permits": "--permits",
    "count": "--count",
    "force": "--force",
    "expected": "--expected",
    "party": "--party",
    "next_token": "--next-token",
}


def option_message(exc: InvalidArgument, flags: Mapping[str, str] = FLAGS) -> str:
    """The core's own message for a bad option value, prefixed with the flag it is about.

    The core names the parameter it refused (``exc.argument``, e.g. ``"ttl"``);
    the command line knows it by its flag (``--ttl``). The message itself is
    never rewritten: the core's text is the one explanation of the rule.
    """
    argument = getattr(exc, "argument", None)
    flag = flags.get(argument) if isinstance(argument, str) else None
    return f"option {flag}: {exc}" if flag is not None else str(exc)


def _ttl(text: str) -> float:
    """A duration that is a valid grant TTL (1 s to a day), checked while parsing.

    The check and its message are the core's own; argparse names the option
    (``argument --ttl: ttl must be positive, ...``).
    """
    try:
        return check.ttl(duration(text))
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ttl(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"how long the grant lives without renewal; renewed every ttl/3 "
        f"(default {DEFAULT_TTL:g})",
    )


def timeout(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--timeout", type=duration, default=None, metavar="SECONDS", help=help)


def hold_for(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--for",
        dest="for_",
        type=duration,
        default=None,
        metavar="SECONDS",
        help="release after this long instead of waiting for Ctrl-C",
    )


def kill_grace(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kill-grace",
        type=duration,
        default=10.0,
        metavar="SECONDS",
        help="if the grant is lost, SIGTERM the command, then SIGKILL it after this long "
        "(default 10)",
    )


async def release_quietly(s: Session, grant: Grant) -> None:
    """Release ``grant``; a failure is reported, never raised (the grant then expires)."""
    try:
        await grant.release()
    except KonductorError as exc:
        s.error(f"could not release {grant.describe()} ({exc}); it expires after its TTL")
