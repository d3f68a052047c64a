"""Fixtures running the store conformance suite over every backend.

``backend`` is parametrized: ``memory`` (in-process), ``local`` (a fresh SQLite
file per test; ``another()`` opens a second LocalStore on the same file, with
its own connections, as another process would) and ``kubernetes`` (the real
kube-apiserver from the session's ``kube_env``, a fresh namespace per test).
Each backend says how to force the store to forget old versions, so the
expired-watch recovery is exercised on all of them.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from konductor.store import KubernetesStore, LocalStore, MemoryStore, Store

_counter = itertools.count()


@dataclass
class Backend:
    name: str
    store: Store
    compact: Callable[[], None]
    new_store: Callable[..., Store]
    extra: list[Store] = field(default_factory=list)

    def another(self, **kwargs: Any) -> Store:
        """A second, independent client of the same store (own connections)."""
        store = self.new_store(**kwargs)
        self.extra.append(store)
        return store


def fresh_namespace(kube_env: Any) -> str:
    ns = f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    kube_env.create_namespace(ns)
    return ns


def kubeconfig_via(kubeconfig: Path, server: str, directory: Path) -> Path:
    """A copy of ``kubeconfig`` whose cluster entries point at ``server``."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for cluster in doc["clusters"]:
        cluster["cluster"]["server"] = server
    path = directory / f"kubeconfig-{uuid.uuid4().hex[:8]}"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(
    params=["memory", "local", pytest.param("kubernetes", marks=pytest.mark.kubernetes)]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryStore()
        # A single MemoryStore is the whole "server": every client shares it.
        b = Backend("memory", memory, memory.compact, lambda **_: memory)
    elif request.param == "local":
        db = tmp_path / "konductor.db"

        def new_local(**kwargs: Any) -> Store:
            return LocalStore(db, **kwargs)

        local = LocalStore(db)
        b = Backend("local", local, local.compact, new_local)
    else:
        env = request.getfixturevalue("kube_crds")
        ns = fresh_namespace(env)

        def new_store(**kwargs: Any) -> Store:
            kwargs.setdefault("kubeconfig", env.admin_kubeconfig)
            return KubernetesStore(namespace=ns, **kwargs)

        def compact() -> None:
            if not env.can_compact:
                pytest.skip("this cluster's etcd cannot be compacted from the tests")
            env.compact_etcd()

        b = Backend("kubernetes", new_store(), compact, new_store)
    try:
        yield b
    finally:
        for s in [b.store, *b.extra]:
            await s.close()
