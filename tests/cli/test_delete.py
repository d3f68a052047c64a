"""``konductor delete KIND NAME``: every kind, on the real API server and the local store."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from konductor import Client, KubernetesStore, LocalStore
from konductor._store._base import Store
from konductor._store._kinds import PRIMITIVE_KINDS
from tests.cli.support import Target, command, env, konductor
from tests.client.test_delete import make_one_of_each

NAMES = {"semaphore": "sem", "mutex": "mtx", "rwmutex": "rw", "barrier": "bar"}
NAMES |= {"gate": "gate", "once": "once", "waitgroup": "wg", "lease": "lease"}
NAMES |= {"ratelimit": "rl"}


def populate(store: Store) -> None:
    async def run() -> None:
        # The client's close releases the grants; the objects stay.
        async with Client(store) as client:
            await make_one_of_each(client)

    asyncio.run(run())


def check_every_kind(opts: list[str]) -> None:
    assert set(NAMES) == set(PRIMITIVE_KINDS)
    for kind, name in NAMES.items():
        refused = konductor(*opts, "delete", kind, name)  # no terminal, no --yes
        assert refused.returncode == 2, refused.stderr
        assert "pass --yes to confirm" in refused.stderr
        done = konductor(*opts, "delete", kind, name, "--yes", "-o", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["deleted"] is True
        again = konductor(*opts, "delete", kind, name, "--yes")
        assert again.returncode == 1
        assert "not found" in again.stderr
    status = konductor(*opts, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["objects"] == []


@pytest.mark.kubernetes
def test_delete_every_kind_on_the_api_server(kube: Target, kube_crds: Any) -> None:
    populate(KubernetesStore(kube.namespace, kubeconfig=kube.kubeconfig))
    check_every_kind(kube.opts)


def test_delete_every_kind_on_the_local_store(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    populate(LocalStore(db))
    check_every_kind(["--store", f"local:{db}"])


def _converse(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run with stdin and stderr on a terminal; answer the question with ``answer``."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command(*args),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        start_new_session=True,
        env=env(),
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while b"[y/N]" not in screen:
            assert time.monotonic() < deadline, screen
            if select.select([master], [], [], 0.1)[0]:
                screen += os.read(master, 4096)
        os.write(master, answer)
        code = proc.wait(timeout=60)
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return code, screen.decode(errors="replace")


def test_delete_asks_on_a_terminal(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    populate(LocalStore(db))
    opts = ["--store", f"local:{db}"]
    code, screen = _converse([*opts, "delete", "barrier", "bar"], b"n\n")
    assert code == 1
    assert "delete barrier 'bar' in namespace 'default' (1/1 arrived, open)?" in screen
    assert "not deleted" in screen
    assert konductor(*opts, "barrier", "status", "bar").returncode == 0
    code, screen = _converse([*opts, "delete", "barrier", "bar"], b"y\n")
    assert code == 0, screen
    assert konductor(*opts, "barrier", "status", "bar").returncode == 1
