"""Fakes shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from konductor import StoreUnavailable
from konductor.store import Kind, MemoryStore, StoredObject


class FlakyStore(MemoryStore):
    """A memory store whose status writes (replace or patch) fail while ``down`` is set."""

    down = False

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
        if self.down:
            raise StoreUnavailable("simulated outage")
        return await super().replace_status(
            kind, name, status, version=version, timeout=timeout, on_sent=on_sent
        )

    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[dict[str, Any]],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        if self.down:
            raise StoreUnavailable("simulated outage")
        return await super().patch_status(kind, name, ops, timeout=timeout, on_sent=on_sent)
