"""On a terminal: progress lines (never in a pipe), and Ctrl-C delivered once.

These run on the local store (one SQLite file shared by the processes): the
progress line follows the store's watch, whatever the store is.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.cli.support import (
    TRAP_CHILD,
    command,
    env,
    eventually,
    finish,
    kill_all,
    konductor,
    spawn,
)


class Terminal:
    """A process whose stderr is a pseudo-terminal (stdout stays a pipe)."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            command(*args),
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            env=env(),
        )
        os.close(slave)
        self.screen = b""

    def read(self, seconds: float = 0.2) -> str:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process is gone and the terminal closed
                    break
                if not chunk:
                    break
                self.screen += chunk
        return self.screen.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        eventually(lambda: text in self.read(), timeout=timeout, what=repr(text))

    def close(self) -> None:
        kill_all([self.proc])
        os.close(self.master)


def test_barrier_wait_shows_arrivals_on_a_terminal_only(tmp_path: Path) -> None:
    store = ["--store", f"local:{tmp_path / 'k.db'}"]
    term = Terminal(*store, "barrier", "wait", "start", "--timeout", "120")
    piped = spawn(*store, "barrier", "wait", "start", "--timeout", "120")
    try:
        term.wait_for("waiting for barrier 'start': nobody has arrived yet")
        assert konductor(*store, "barrier", "arrive", "start", "--expected", "2").returncode == 0
        term.wait_for("waiting for barrier 'start': 1/2 arrived")
        assert konductor(*store, "barrier", "arrive", "start").returncode == 0
        code, out, _ = finish(term.proc)
        assert code == 0
        assert out == "barrier 'start': 2/2 arrived (open)\n"  # stdout: the result only
        screen = term.read()
        assert "\r\x1b[K" in screen  # redrawn in place
        assert screen.endswith("\r\x1b[K")  # and erased before exiting
        code, out, err = finish(piped)
        assert (code, out, err) == (0, "barrier 'start': 2/2 arrived (open)\n", "")
    finally:
        term.close()
        kill_all([piped])


def queue_of(store: list[str]) -> tuple[list[object], list[object]]:
    return queue_of_named(store, "db")


def queue_of_named(store: list[str], name: str) -> tuple[list[object], list[object]]:
    proc = konductor(*store, "semaphore", "get", name, "-o", "json")
    if proc.returncode != 0:  # not created yet
        return [], []
    got = json.loads(proc.stdout)
    return got["holders"], got["queue"]


def test_semaphore_acquire_shows_its_queue_position(tmp_path: Path) -> None:
    store = ["--store", f"local:{tmp_path / 'k.db'}"]
    holder = spawn(*store, "semaphore", "acquire", "db", "--permits", "1")
    first = second = None
    try:
        eventually(lambda: queue_of(store)[0], what="the holder")
        first = spawn(*store, "semaphore", "acquire", "db")
        eventually(lambda: len(queue_of(store)[1]) == 1, what="the first waiter")
        second = Terminal(*store, "semaphore", "acquire", "db")
        second.wait_for("waiting for semaphore 'db': queue position 2 (1/1 permits in use)")
        holder.send_signal(signal.SIGINT)  # the first waiter gets the permit
        assert finish(holder)[0] == 0
        second.wait_for("waiting for semaphore 'db': queue position 1 (1/1 permits in use)")
        first.send_signal(signal.SIGTERM)  # and hands it on
        code, _, err = finish(first)
        assert code == 0
        assert "\r" not in err  # a waiter whose stderr is a pipe drew no progress line
        assert "\x1b" not in err
        second.wait_for("holding; Ctrl-C to release")
        second.proc.send_signal(signal.SIGINT)
        code, out, _ = finish(second.proc)
        assert code == 0
        assert out.startswith("acquired semaphore 'db': token 3")
        assert "holding; Ctrl-C to release" in second.read()
    finally:
        kill_all([p for p in (holder, first) if p is not None])
        if second is not None:
            second.close()


class ControllingTerminal(Terminal):
    """A process in the foreground of its own terminal, as in an interactive shell.

    Ctrl-C typed there (``\\x03``) reaches the terminal's whole foreground
    process group: konductor and the child of ``run`` alike.
    """

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            command(*args),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            start_new_session=True,
            # The new session's leader takes the terminal as its controlling one.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env=env(),
        )
        os.close(slave)
        self.screen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)


def test_ctrl_c_on_a_terminal_reaches_the_child_once(tmp_path: Path) -> None:
    """konductor does not pass on a Ctrl-C the terminal already gave its child."""
    store = ["--store", f"local:{tmp_path / 'k.db'}"]
    marker = tmp_path / "child.log"
    term = ControllingTerminal(
        *store,
        "semaphore",
        "run",
        "tty",
        "--permits",
        "1",
        "--",
        sys.executable,
        "-c",
        TRAP_CHILD,
        str(marker),
    )
    try:
        eventually(lambda: marker.exists() and marker.read_text(), what="the child to start")
        term.type(b"\x03")
        code, _, _ = finish(term.proc)
        assert marker.read_text().splitlines()[1:] == [f"signal {signal.SIGINT.value}"]
        assert code == 10 + signal.SIGINT.value
        assert queue_of_named(store, "tty") == ([], [])
    finally:
        term.close()


def test_ctrl_c_on_a_terminal_while_waiting(tmp_path: Path) -> None:
    store = ["--store", f"local:{tmp_path / 'k.db'}"]
    holder = spawn(*store, "semaphore", "acquire", "db", "--permits", "1")
    term = None
    try:
        eventually(lambda: queue_of(store)[0], what="the holder")
        term = ControllingTerminal(*store, "semaphore", "acquire", "db")
        term.wait_for("queue position 1")
        term.type(b"\x03")
        code, out, _ = finish(term.proc)
        assert code == 128 + signal.SIGINT.value
        assert out == ""
        assert "interrupted by SIGINT" in term.read()
        assert queue_of(store)[1] == []  # no ticket left behind
        holder.send_signal(signal.SIGINT)
        assert finish(holder)[0] == 0
    finally:
        kill_all([holder])
        if term is not None:
            term.close()


def test_no_progress_line_while_the_command_of_run_owns_the_terminal(tmp_path: Path) -> None:
    store = ["--store", f"local:{tmp_path / 'k.db'}"]
    for args in (
        ["once", "run", "o"],
        ["semaphore", "run", "s", "--permits", "1"],
        ["lease", "run", "l"],
    ):
        script = "echo child-output >&2; sleep 1; echo child-done >&2"
        term = Terminal(*store, *args, "--", "sh", "-c", script)
        try:
            code, _, _ = finish(term.proc)
            assert code == 0
            screen = term.read()
            assert "child-output" in screen
            after = screen.split("child-output", 1)[1]
            assert after.strip() == "child-done", after  # nothing drawn over the child's output
        finally:
            term.close()
