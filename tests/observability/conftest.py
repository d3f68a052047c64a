"""Fixtures of the observability tests: a registry of our own, a fake clock, a store that fails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import konductor.metrics
from konductor import Client, StoreUnavailable
from konductor._engine._clock import FakeClock
from konductor._store._base import StoredObject
from konductor._store._kinds import Kind
from konductor._store._memory import MemoryStore


class FlakyStore(MemoryStore):
    """A memory store whose status/spec writes, or watch streams, fail while told to.

    A fake of the store, not a mock of a client: everything else is the real
    memory store, so the engine above it runs exactly as in production.
    """

    def __init__(self, namespace: str = "default") -> None:
        super().__init__(namespace)
        self.fail_writes = False
        self.fail_watches = 0  # the next N raw watch opens fail

    async def replace_status(
        self, kind: Kind, name: str, status: Mapping[str, Any], **kw: Any
    ) -> StoredObject:
        if self.fail_writes:
            raise StoreUnavailable("cut off (test)")
        return await super().replace_status(kind, name, status, **kw)

    async def patch_status(
        self, kind: Kind, name: str, ops: Sequence[dict[str, Any]], **kw: Any
    ) -> StoredObject:
        if self.fail_writes:
            raise StoreUnavailable("cut off (test)")
        return await super().patch_status(kind, name, ops, **kw)

    async def replace_spec(
        self, kind: Kind, name: str, spec: Mapping[str, Any], **kw: Any
    ) -> StoredObject:
        if self.fail_writes:
            raise StoreUnavailable("cut off (test)")
        return await super().replace_spec(kind, name, spec, **kw)

    def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        if self.fail_watches:
            self.fail_watches -= 1
            raise StoreUnavailable("watch cut off (test)")
        return super()._raw_watch(kind, name, since)


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    konductor.metrics.instrument(reg)
    yield reg
    konductor.metrics.uninstrument(reg)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
async def clients(store: FlakyStore, clock: FakeClock) -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(identity: str) -> Client:
        client = Client(store, identity=identity, clock=clock)
        made.append(client)
        return client

    yield make
    for c in made:
        await c._rt.close()
