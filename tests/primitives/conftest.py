"""Primitive tests run against every store: memory and the real API server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from konductor import Client
from tests.store.conftest import Backend
from tests.store.conftest import backend as backend


@pytest.fixture
async def clients(backend: Backend) -> AsyncIterator[Callable[..., Client]]:
    """A factory of clients on the backend, each with its own store connection."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        store = backend.store if not made else backend.another()
        client = Client(store, **kwargs)
        made.append(client)
        return client

    yield make
    for c in made:
        await c._rt.close()
