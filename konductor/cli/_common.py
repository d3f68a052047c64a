"""What every ``konductor`` command shares: the store, output, signals, progress, exit codes.

A command is an ``async def command(session) -> int``. The :class:`Session`
builds the store and the client lazily (``manifests`` needs neither), writes
data to stdout in the chosen format (``-o table|json|yaml``) and messages to
stderr, and turns SIGINT / SIGTERM / SIGHUP / SIGQUIT into a clean stop: a
wait in progress is cancelled (which leaves no queue ticket behind), and
whatever the client still holds is released when the session closes.

Progress lines (``barrier 'x': 2/3 arrived``) are drawn only when stderr is a
terminal, and are erased before anything else is printed, so a pipe or a log
file never sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import IO, Any, TypeVar

import yaml

from konductor._admin import ObjectStatus
from konductor._client import Client
from konductor._engine._grant import Grant
from konductor._errors import ConfigurationError, KonductorError
from konductor._names import validate_name
from konductor._store._base import Store

T = TypeVar("T")
JSON = dict[str, Any]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

#: Signals that stop a command (or are forwarded to the child of ``run``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: Signals that are only forwarded to the child of ``run`` (ignored otherwise).
FORWARD_ONLY = (signal.SIGUSR1, signal.SIGUSR2)
#: Signals a terminal sends to its whole foreground process group by itself.
TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})


class UsageError(KonductorError):
    """Bad arguments noticed after parsing: exit code 2 with the command's usage."""


class Interrupted(KonductorError):
    """A signal stopped the command before it finished: exit code 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class ChildLost(KonductorError):
    """The grant was lost while the child of ``run`` ran; the child was stopped."""


_DURATION = re.compile(r"(?P<value>\d+(\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """An argparse type: seconds as ``15``, ``1.5``, ``500ms``, ``30s``, ``2m`` or ``1h``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use seconds (15, 1.5) or 500ms, 30s, 2m, 1h"
        )
    return float(match["value"]) * _UNITS[match["unit"]]


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -- time and tables ------------------------------------------------------------------


def span(seconds: float) -> str:
    """``75`` -> ``1m15s``; whole seconds, for tables."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def ttl_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:g}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by three spaces, like ``kubectl get``."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``Key:   value`` lines, aligned, like ``kubectl describe``."""
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {'-' if v is None else v}" for k, v in pairs)


# -- the session ----------------------------------------------------------------------


class Progress:
    """One status line on a terminal, redrawn in place; nothing at all elsewhere."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last: str | None = None

    def show(self, line: str) -> None:
        if not self.enabled or line == self._last:
            return
        self._last = line
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def stop(self) -> None:
        """Erase the line and draw no more (a child is about to use the terminal)."""
        self.clear()
        self.enabled = False

    def clear(self) -> None:
        if self._last is not None:
            self._last = None
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def foreground_of_terminal() -> bool:
    """Whether this process is in the foreground process group of its controlling terminal.

    Then the terminal itself delivers Ctrl-C (SIGINT), Ctrl-\\ (SIGQUIT) and a
    hangup to every process of the group, a child of ``run`` included.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class Session:
    """One command invocation: its arguments, store, client, output and signals."""

    def __init__(
        self,
        args: argparse.Namespace,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.args = args
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.output: str = getattr(args, "output", "table")
        self.progress = Progress(self.err, _isatty(self.err))
        self._store: Store | None = None
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self.interrupted: int | None = None  # first stop signal received (no child running)
        self._signals_seen = 0
        # Set by ``run`` while its child runs: signals go to the child instead.
        self.forward: Callable[[int], None] | None = None
        self.child_signal: int | None = None  # first signal received while the child ran
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup_fd = -1
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        #: Set once the command has finished: a late stop signal exits with it.
        self.exit_code: int | None = None

    # -- store and client -----------------------------------------------------------

    @property
    def namespace_arg(self) -> str | None:
        ns: str | None = getattr(self.args, "namespace", None)
        return ns

    def store(self) -> Store:
        """The store the global options select (built on first use).

        Raises:
            UsageError: ``--store`` names no known store, or ``--kubeconfig`` /
                ``--context`` was combined with a store that is not Kubernetes.
            ConfigurationError: nothing is configured (see docs/client.md).
            StoreNotFound: a read-only command (get, list, status) names a local
                store file that does not exist; it is not created.
        """
        if self._store is None:
            store = build_store(self.args)
            if getattr(self.args, "read_only", False):
                name = getattr(self.args, "name", None)
                if isinstance(name, str):
                    validate_name(name)  # a bad name is a usage error, whatever the store
                _check_exists(store)
            self._store = store
        return self._store

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.store())
        return self._client

    @property
    def namespace(self) -> str:
        return self.store().namespace

    async def close(self) -> None:
        """Release whatever the client still holds or queues, and close the store."""
        self.progress.clear()
        try:
            if self._client is not None:
                await self._client.close()
            elif self._store is not None:
                await self._store.close()
        finally:
            self._client = None
            self._store = None

    # -- output ---------------------------------------------------------------------

    def emit(self, data: Any, render: Callable[[], str]) -> None:
        """Print ``data`` as JSON / YAML, or ``render()`` for ``-o table``."""
        self.progress.clear()
        if self.output == "json":
            text = json.dumps(data, indent=2, sort_keys=False, default=str)
        elif self.output == "yaml":
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
        else:
            text = render()
        if text:
            print(text, file=self.out, flush=True)

    def say(self, message: str) -> None:
        """A message for people, on stderr (never mixed into the data on stdout)."""
        self.progress.clear()
        print(message, file=self.err, flush=True)

    def error(self, message: str) -> None:
        self.say(f"konductor: error: {message}")

    # -- signals --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Route stop signals to :meth:`_on_signal` (main thread only; a no-op elsewhere).

        The handlers are Python-level ones (``signal.signal``), not the loop's
        ``add_signal_handler``: those are reset to the default action when the
        loop closes, and a SIGTERM in the last milliseconds of the exit then
        killed the process (exit status 143 instead of the code it had already
        decided). Ours stay installed until :meth:`restore_signals`, so every
        signal is handled, from the start of the command to the process's end.
        A wake-up socket makes the loop notice a signal at once, whichever
        thread the kernel delivered it to.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if threading.current_thread() is not threading.main_thread():
            return  # an embedding caller on another thread: keep the defaults
        self._wake = socket.socketpair()
        for sock in self._wake:
            sock.setblocking(False)
        self._old_wakeup_fd = signal.set_wakeup_fd(
            self._wake[1].fileno(), warn_on_full_buffer=False
        )
        loop.add_reader(self._wake[0].fileno(), self._drain_wakeups)
        for signum in (*STOP_SIGNALS, *FORWARD_ONLY):
            self._previous[signum] = signal.signal(signum, self._signal_arrived)

    def _drain_wakeups(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(OSError):
            while self._wake[0].recv(512):
                pass

    def _signal_arrived(self, signum: int, frame: FrameType | None) -> None:
        # A Python-level handler: runs on the main thread between two bytecodes,
        # possibly in the middle of the loop's own code; hand the signal to the loop.
        if self.exit_code is not None:
            # The command has finished and decided its exit code; the process is
            # on its way out. Leave now, with that code, not with the signal's.
            for stream in (self.out, self.err):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(self.exit_code)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_signal, signum)

    def finish_signals(self, exit_code: int) -> None:
        """The command has decided ``exit_code``: a stop signal from now on exits with it.

        Called on the loop before it closes; the Python-level handlers stay in
        place (see :meth:`restore_signals`).
        """
        self.exit_code = exit_code
        if self._wake is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._wake[0].fileno())
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for sock in self._wake:
                sock.close()
            self._wake = None

    def restore_signals(self, *, ignore: bool = False) -> None:
        """After the loop closed: give the signals back (``ignore``: ignore them until exit).

        ``ignore`` is for the ``konductor`` command itself, just before the
        interpreter exits: an ignored signal stays ignored through the
        interpreter's finalization, where a handled one reverts to the default
        action (which would kill the process with 128 + N).
        """
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if ignore else previous)
        self._previous.clear()

    def _on_signal(self, signum: int) -> None:
        if self.forward is not None:  # a child runs: it decides how to stop
            if self.child_signal is None:
                self.child_signal = signum
            self.forward(signum)
            return
        if signum in FORWARD_ONLY:
            return
        self._signals_seen += 1
        if self.interrupted is None:
            self.interrupted = signum
            if self._stop is not None:
                self._stop.set()
        elif self._signals_seen == 2:
            self.say(
                "konductor: still releasing; send the signal again to exit at once "
                "(what is held then expires after its TTL)"
            )
        else:
            os._exit(128 + signum)

    def check_interrupted(self) -> None:
        """Raise :class:`Interrupted` if a stop signal has arrived."""
        if self.interrupted is not None:
            raise Interrupted(self.interrupted)

    async def guard(
        self,
        aw: Awaitable[T],
        *,
        undo: Callable[[T], Awaitable[object]] | None = None,
    ) -> T:
        """Await ``aw`` unless a stop signal comes first; then cancel it and raise.

        ``undo(result)`` gives back a result that was obtained at the very
        moment the signal arrived (an acquire that completed regardless).

        Raises:
            Interrupted: a stop signal arrived first.
        """
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        if self._stop is None:
            return await task
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            waits: set[asyncio.Future[Any]] = {task, stopper}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KonductorError):
                await task
        if self.interrupted is not None:
            if task.done() and not task.cancelled() and task.exception() is None and undo:
                with contextlib.suppress(KonductorError):
                    await asyncio.shield(undo(task.result()))
            raise Interrupted(self.interrupted)
        return task.result()

    async def hold(self, lost: asyncio.Event, seconds: float | None) -> str:
        """Wait until a stop signal (``"stopped"``), a loss (``"lost"``) or ``seconds`` pass."""
        if self._stop is None:
            self._stop = asyncio.Event()
        waits = {
            asyncio.ensure_future(self._stop.wait()): "stopped",
            asyncio.ensure_future(lost.wait()): "lost",
        }
        try:
            done, _ = await asyncio.wait(
                waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        if lost.is_set():
            return "lost"
        return "stopped" if done else "elapsed"

    async def hold_grant(self, grant: Grant, what: str, lost_what: str) -> int:
        """``acquire`` commands: hold ``grant`` in the foreground, then release it.

        Holds until Ctrl-C / SIGTERM or ``--for`` seconds; exits 1 (after
        saying so) if the grant was lost meanwhile.
        """
        for_ = self.args.for_
        self.say(
            f"holding for {for_:g}s; Ctrl-C to release early"
            if for_ is not None
            else "holding; Ctrl-C to release"
        )
        outcome = await self.hold(grant.lost, for_)
        await grant.release()
        if outcome == "lost":
            self.error(f"{lost_what} was lost: {grant.lost_reason}")
            return EXIT_ERROR
        self.say(f"released {what} {grant.name!r} (token {grant.token})")
        return EXIT_OK

    @property
    def interactive(self) -> bool:
        """Whether a person can answer a question: stdin and stderr are terminals."""
        return _isatty(sys.stdin) and _isatty(self.err)

    # -- progress -------------------------------------------------------------------

    async def watching(
        self,
        kind: str,
        name: str,
        render: Callable[[ObjectStatus | None], str],
        aw: Awaitable[T],
        *,
        undo: Callable[[T], Awaitable[object]] | None = None,
    ) -> T:
        """:meth:`guard` ``aw`` while a terminal shows ``render(status)`` on every change.

        The changes come from the core (:meth:`konductor.Admin.watch`, the
        object's shared watch); the progress line is best effort: if that
        watch fails, the line stops changing and the wait goes on.
        """
        if not self.progress.enabled:
            return await self.guard(aw, undo=undo)

        async def follow() -> None:
            with contextlib.suppress(KonductorError):
                async for current in self.client().admin.watch(kind, name):
                    self.progress.show(render(current))

        follower = asyncio.ensure_future(follow())
        try:
            return await self.guard(aw, undo=undo)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            self.progress.clear()


async def confirm(s: Session, question: str) -> bool:
    """Ask ``question`` on the terminal; true for an answer starting with ``y``.

    Reads stdin without a thread (a reader on the loop), so a stop signal
    cancels the question at once.
    """
    s.progress.clear()
    s.err.write(question)
    s.err.flush()
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not answer.done():
            answer.set_result(os.read(fd, 1024).decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        text = await answer
    finally:
        loop.remove_reader(fd)
    return text.strip().lower().startswith("y")


# -- store selection ------------------------------------------------------------------


class StoreNotFound(KonductorError):
    """A read-only command was pointed at a local store that does not exist."""


def _check_exists(store: Store) -> None:
    from konductor._store._local import LocalStore

    if isinstance(store, LocalStore) and not store.path.exists():
        raise StoreNotFound(
            f"the local store {store.path} does not exist, so there is nothing to show; check "
            "the path in --store / KONDUCTOR_STORE (a command that writes, such as "
            "`semaphore create`, creates it)"
        )


def build_store(args: argparse.Namespace) -> Store:
    """The store named by ``--store`` / ``--kubeconfig`` / ``--context``, else resolved.

    Raises:
        UsageError: an unknown ``--store``, or ``--kubeconfig`` with a non-Kubernetes store.
        ConfigurationError: nothing is configured.
    """
    from konductor._config import _env_namespace, resolve_store, store_from_spec

    spec: str | None = getattr(args, "store", None)
    kubeconfig: str | None = getattr(args, "kubeconfig", None)
    context: str | None = getattr(args, "context", None)
    namespace = _env_namespace(getattr(args, "namespace", None))
    if kubeconfig or context:
        if spec and spec.strip().lower() != "kubernetes":
            raise UsageError(
                f"--kubeconfig / --context select the Kubernetes store; they cannot be "
                f"combined with --store {spec}"
            )
        from konductor._store._kubernetes import KubernetesStore

        if kubeconfig and not os.path.isfile(kubeconfig):
            raise UsageError(f"--kubeconfig {kubeconfig}: no such file")
        return KubernetesStore(namespace, kubeconfig=kubeconfig, context=context)
    if spec:
        try:
            return store_from_spec(spec, namespace)
        except ConfigurationError as exc:
            raise UsageError(str(exc).replace("KONDUCTOR_STORE=", "--store ")) from exc
    return resolve_store(namespace)
