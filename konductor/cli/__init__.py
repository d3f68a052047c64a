"""The ``konductor`` command: konductor's primitives from a shell, for scripts and operators.

::

    konductor install | uninstall | manifests
    konductor semaphore create|get|list|delete|acquire|release|run
    konductor barrier arrive|wait|status
    konductor lease acquire|release|status|run
    konductor gate open|close|wait|status
    konductor once run|status|reset
    konductor mutex acquire|run|status|release
    konductor rwmutex acquire|run|status|release --mode read|write
    konductor waitgroup add|done|wait|status
    konductor status [--watch]
    konductor describe KIND NAME
    konductor delete KIND NAME [--yes]
    konductor repair KIND NAME

Global options (before or after the command): ``-n/--namespace``,
``--kubeconfig``, ``--context``, ``--store kubernetes|memory|local[:PATH]``,
``-o/--output table|json|yaml``, ``-v``. Exit codes: 0 ok, 1 error, 2 usage,
3 timeout; a ``run`` command exits with its child's code; a command stopped
by a signal before it finished exits 128 + the signal number. See docs/cli.md.

Built on the async :class:`konductor.Client` (one ``asyncio.run`` per
invocation), with nothing but argparse, so the command works wherever the
library does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from konductor._errors import InvalidArgument, KonductorError, WaitTimeout
from konductor.cli import (
    _barrier,
    _delete,
    _describe,
    _install,
    _lease,
    _locks,
    _once,
    _semaphore,
    _status,
)
from konductor.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Interrupted,
    Session,
    UsageError,
)
from konductor.cli._options import Handler, option_message

__all__ = (
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_parser",
    "console",
    "main",
)

EPILOG = """\
exit codes:
  0    success
  1    error (not found, forbidden, a grant lost, the API server unreachable, ...)
  2    usage: bad arguments or options
  3    timeout: --timeout passed before the wait ended
  N    `... run`: the command's own exit code (127: not found, 126: not executable)
  128+N  stopped by signal N before finishing (130: Ctrl-C); what was held is released
  141    the reader of the output went away (`konductor status | head -1`)

`konductor COMMAND --help` describes each command in full: what it does, its
options and defaults. (The guide with examples, docs/cli.md, is part of
konductor's source repository, not of the installed package.)
"""


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options; on subcommands they default to SUPPRESS (they may come anywhere)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="namespace of the objects (default: KONDUCTOR_NAMESPACE, the pod's or the "
        "kubeconfig context's namespace, else default)",
    )
    g.add_argument(
        "--kubeconfig",
        default=default(None),
        metavar="PATH",
        help="kubeconfig file (default: KUBECONFIG, ~/.kube/config); implies --store kubernetes",
    )
    g.add_argument(
        "--context", default=default(None), help="kubeconfig context (default: its current one)"
    )
    g.add_argument(
        "--store",
        default=default(None),
        metavar="STORE",
        help="kubernetes, local, local:PATH (one machine) or memory (this process only); "
        "default: KONDUCTOR_STORE, then in-cluster, then a kubeconfig",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default=default("table"),
        help="output format (default table)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log more (-v: info, -vv: debug)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``konductor`` argument parser (public for documentation tools and tests)."""
    from konductor import __version__

    parser = argparse.ArgumentParser(
        prog="konductor",
        description="Cluster-wide coordination primitives stored in the Kubernetes API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"konductor {__version__}")
    _global_options(parser, suppress=False)
    parent = argparse.ArgumentParser(add_help=False)
    _global_options(parent, suppress=True)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    _install.register(groups, parent)
    _status.register(groups, parent)
    _describe.register(groups, parent)
    _delete.register(groups, parent)
    _semaphore.register(groups, parent)
    _barrier.register(groups, parent)
    _lease.register(groups, parent)
    _once.register(groups, parent)
    _locks.register(groups, parent)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Options and the command after the first ``--`` (``None`` when there is none)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """konductor's log on stderr for this invocation; the logger is restored afterwards."""
    logger = logging.getLogger("konductor")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("konductor: %(levelname)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING
    )
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``konductor ARGS``; return the exit code (the console script exits with it)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options, command = _split_command(args_in)
    try:
        args, extra = parser.parse_known_args(options)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    leaf: argparse.ArgumentParser = args.parser
    try:
        if extra:
            if args.run:
                raise UsageError(
                    f"unexpected arguments {' '.join(extra)!r}: put the command after --, "
                    f"e.g. {leaf.prog} NAME -- {' '.join(extra)}"
                )
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if args.run and not command:
            raise UsageError(f"no command to run: put it after --, e.g. {leaf.prog} NAME -- CMD")
        if command is not None and not args.run:
            raise UsageError(f"{leaf.prog} takes no command after --")
    except UsageError as exc:
        leaf.print_usage(sys.stderr)
        print(f"{leaf.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.command = command or []
    session = Session(args)
    with _logging(args.verbose):
        try:
            return asyncio.run(_run(session))
        except KeyboardInterrupt:  # a signal before the handlers were installed
            return 130
        finally:
            session.restore_signals(ignore=_exiting)


#: Set by :func:`console`: the process exits right after :func:`main` returns.
_exiting = False


def console() -> NoReturn:
    """The ``konductor`` console script: :func:`main`, then exit with its code.

    A stop signal that arrives after the command finished, while the
    interpreter shuts down, is ignored: the exit code is the one the command
    decided (see :meth:`Session.restore_signals`).
    """
    global _exiting
    _exiting = True
    sys.exit(main())


async def _run(session: Session) -> int:
    session.install_signal_handlers()
    code = EXIT_ERROR  # if something unexpected escapes
    try:
        code = await _outcome(session)
        return code
    finally:
        session.finish_signals(code)


async def _outcome(session: Session) -> int:
    args = session.args
    leaf: argparse.ArgumentParser = args.parser
    try:
        try:
            handler: Handler = args.handler
            return await handler(session)
        finally:
            try:
                await asyncio.shield(session.close())
            except KonductorError as exc:
                session.error(f"while closing: {exc}")
    except (UsageError, InvalidArgument) as exc:
        session.progress.clear()
        leaf.print_usage(sys.stderr)
        message = option_message(exc) if isinstance(exc, InvalidArgument) else str(exc)
        print(f"{leaf.prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        session.say(f"konductor: {exc}")
        return 128 + exc.signum
    except (WaitTimeout, TimeoutError) as exc:
        session.error(f"timeout: {exc}")
        return EXIT_TIMEOUT
    except KonductorError as exc:
        session.error(str(exc))
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our output went away (``konductor status | head -1``):
        # stop quietly, as a command killed by SIGPIPE would, and keep the
        # interpreter's final flush of stdout from failing again.
        _silence_stdout()
        return 128 + signal.SIGPIPE


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
