"""The child of ``konductor ... run``: start it, pass signals on, stop it if the grant is lost.

Like ``flock``, the grant is held exactly while the command runs. The
command's process group depends on how konductor itself runs:

- **In the foreground of a terminal** (interactive use), the child stays in
  konductor's process group, so it keeps the terminal (it can read from it)
  and Ctrl-C, Ctrl-\\ and a hangup reach it from the terminal itself;
  konductor does not send those a second time. SIGTERM, SIGUSR1 and SIGUSR2
  sent to konductor are passed on to the child.
- **Otherwise** (a pod, a CI job, a supervisor, a background job), the child
  gets a process group of its own and every signal konductor receives is
  passed on to that whole group, so a shell wrapper's own children are
  reached too, and stopping the command after a loss stops all of it.

The exit code is the child's (128 + N when signal N killed it), 127 when the
command does not exist, 126 when it cannot be executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from konductor._engine._grant import Grant
from konductor.cli._common import TERMINAL_SIGNALS, ChildLost, Session, foreground_of_terminal

NOT_FOUND = 127
NOT_EXECUTABLE = 126


def exit_code(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


async def _stop(proc: asyncio.subprocess.Process, own_group: bool, grace: float) -> None:
    """SIGTERM the child (its group), then SIGKILL after ``grace`` seconds."""

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if own_group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)

    if proc.returncode is None:
        send(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            send(signal.SIGKILL)
            await proc.wait()
    elif own_group:  # the leader is gone; leftovers of its group are stopped too
        send(signal.SIGKILL)


async def run_child(
    session: Session,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    grant: Grant | None,
    grace: float,
) -> int:
    """Run ``argv`` to its end while the grant is held; return its exit code.

    ``env`` is added to the child's environment. When ``grant`` is lost before
    the child ends, the child is stopped (SIGTERM, then SIGKILL after
    ``grace`` seconds) and :class:`ChildLost` is raised. Cancelling this
    coroutine stops the child the same way.

    Raises:
        ChildLost: the grant was lost while the child ran.
    """
    own_group = not foreground_of_terminal()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**os.environ, **env},
            process_group=0 if own_group else None,
        )
    except FileNotFoundError:
        session.error(f"{argv[0]}: command not found")
        return NOT_FOUND
    except PermissionError as exc:
        session.error(f"{argv[0]}: cannot execute: {exc.strerror}")
        return NOT_EXECUTABLE
    except OSError as exc:
        session.error(f"{argv[0]}: cannot execute: {exc}")
        return NOT_EXECUTABLE

    def forward(signum: int) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if own_group:
                os.killpg(proc.pid, signum)
            elif signum not in TERMINAL_SIGNALS or not foreground_of_terminal():
                proc.send_signal(signum)
            # else: the terminal already delivered it to the child (same group)

    session.forward = forward
    try:
        waiter = asyncio.ensure_future(proc.wait())
        watchers: set[asyncio.Future[Any]] = {waiter}
        loser = asyncio.ensure_future(grant.lost.wait()) if grant is not None else None
        if loser is not None:
            watchers.add(loser)
        try:
            await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if loser is not None:
                loser.cancel()
        if not waiter.done():
            assert grant is not None
            what = grant.describe()
            session.error(f"{what} was lost: {grant.lost_reason}; stopping the command")
            await _stop(proc, own_group, grace)
            raise ChildLost(f"the command was stopped because {what} was lost while it ran")
        assert proc.returncode is not None
        return exit_code(proc.returncode)
    except asyncio.CancelledError:
        await asyncio.shield(_stop(proc, own_group, grace))
        raise
    finally:
        session.forward = None
