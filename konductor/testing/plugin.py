"""konductor's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures for users' own tests, on the in-memory store (no cluster needed):

``konductor_client``
    an async :class:`konductor.Client` on a fresh :class:`MemoryStore`, closed
    after the test (use it from async tests, e.g. with pytest-asyncio or anyio);
``konductor_sync_client``
    a :class:`konductor.SyncClient` on a fresh memory store, closed after the test;
``konductor_clock``
    a :class:`konductor.testing.FakeClock`; clients built with ``clock=`` it
    expire and renew only when the test calls ``await clock.advance(seconds)``.

The decorators' default clients are pointed at the memory store for the test
(``konductor.configure``) and reset afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from konductor._client import Client
from konductor._defaults import configure
from konductor._engine._clock import FakeClock
from konductor._store._memory import MemoryStore
from konductor._sync import SyncClient


@pytest.fixture
def konductor_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def konductor_client() -> AsyncIterator[Client]:
    client = Client(MemoryStore())
    configure(store=client.store)
    try:
        yield client
    finally:
        configure()
        await client.close()


@pytest.fixture
def konductor_sync_client() -> Iterator[SyncClient]:
    client = SyncClient(MemoryStore)
    configure(store=MemoryStore)
    try:
        yield client
    finally:
        configure()
        client.close()
