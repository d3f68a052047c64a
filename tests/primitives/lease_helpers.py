"""Helpers for the lease tests: a per-client outage switch and a leadership witness."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from konductor import StoreUnavailable
from konductor.store import Kind, ObjectList, Store, StoredObject

MICRO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


class Outage(Store):
    """One client's connection to a shared store, which the test can cut (``down``).

    Every call is counted in ``calls``; while ``down`` every call but the watch
    fails with ``StoreUnavailable``, as if only this client lost the network.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.namespace = inner.namespace
        self.down = False
        self.calls: collections.Counter[str] = collections.Counter()

    def _call(self, op: str) -> None:
        self.calls[op] += 1
        if self.down:
            raise StoreUnavailable("simulated outage of this client")

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        self._call("get")
        return await self.inner.get(kind, name, timeout=timeout)

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        self._call("create")
        return await self.inner.create(kind, name, spec)

    async def replace_status(
        self,
        kind: Kind,
        name: str,
        status: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        self._call("replace_status")
        return await self.inner.replace_status(
            kind, name, status, version=version, timeout=timeout, on_sent=on_sent
        )

    async def replace_spec(
        self,
        kind: Kind,
        name: str,
        spec: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        self._call("replace_spec")
        return await self.inner.replace_spec(
            kind, name, spec, version=version, timeout=timeout, on_sent=on_sent
        )

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        self._call("delete")
        await self.inner.delete(kind, name, version=version)

    async def list(self, kind: Kind) -> ObjectList:
        self._call("list")
        return await self.inner.list(kind)

    def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self.inner._raw_watch(kind, name, since)

    async def close(self) -> None:
        pass  # the inner store belongs to the test's backend


class Leaders:
    """Who is leading right now, outside konductor's own bookkeeping."""

    def __init__(self) -> None:
        self.current: list[str] = []
        self.max = 0
        self.history: list[tuple[str, int]] = []  # (who, token) in order of taking office
        self.cancelled: list[str] = []
        self.changed = asyncio.Event()

    def enter(self, who: str, token: int) -> None:
        self.current.append(who)
        self.max = max(self.max, len(self.current))
        self.history.append((who, token))
        self.changed.set()

    def leave(self, who: str, *, cancelled: bool) -> None:
        self.current.remove(who)
        if cancelled:
            self.cancelled.append(who)
        self.changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


def tokens_increase(tokens: Iterable[int]) -> bool:
    seq = list(tokens)
    return all(a < b for a, b in itertools.pairwise(seq))
