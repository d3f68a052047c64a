"""The ``konductor`` command on the local store: what a newcomer meets first."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from pathlib import Path

import pytest

from konductor import Client, LocalStore
from konductor.cli import build_parser, main
from tests.cli.support import ROOT, command, env, konductor


def test_a_read_command_on_a_missing_local_store_says_so_and_creates_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nonexistent-dir" / "sub" / "k.db"
    for args in (["status"], ["semaphore", "get", "x"], ["semaphore", "list"]):
        done = konductor("--store", f"local:{missing}", *args)
        assert done.returncode == 1, done
        assert f"the local store {missing} does not exist" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "nonexistent-dir").exists()
    # A command that writes creates it, and then the read works.
    assert konductor("--store", f"local:{missing}", "semaphore", "create", "x", "--permits", "2")
    assert missing.exists()
    done = konductor("--store", f"local:{missing}", "status")
    assert done.returncode == 0, done.stderr


def test_output_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    db = tmp_path / "k.db"

    async def many() -> None:
        async with Client(LocalStore(db)) as client:
            for i in range(3):
                await client.create_gate(f"g{i}")

    asyncio.run(many())
    # `konductor status -o json | head -1`: the reader leaves after one line.
    proc = subprocess.Popen(
        command("--store", f"local:{db}", "status", "-o", "json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=env(),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write: EPIPE, every time
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141  # 128 + SIGPIPE, as `yes | head -1` reports
    assert err == ""


def _leaves(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    out = []
    for name, child in subs[0].choices.items():
        out += _leaves(child, [*path, name])
    return out


def test_every_command_has_help_that_needs_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    leaves = _leaves(build_parser(), [])
    names = {" ".join(p) for p in leaves}
    for expected in ("mutex run", "rwmutex acquire", "waitgroup wait", "delete", "uninstall"):
        assert expected in names
    for path in leaves:
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert "usage: konductor " + " ".join(path) in out
        assert ".md" not in out, f"{path}: --help points to a file pip users do not have"
