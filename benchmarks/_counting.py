"""A KubernetesStore that counts its calls, split into reads, writes and watches.

``KubernetesStore.api_requests`` counts every HTTP request the store sent
(including retries of failed requests and every watch (re)connection); this
subclass adds a per-method split so that the benchmark can tell reads from
writes. Nothing is changed about what the store does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from konductor.store import Kind, KubernetesStore, ObjectList, StoredObject

READS = ("get", "list")
WRITES = ("create", "replace_status", "patch_status", "replace_spec", "delete")


@dataclass(frozen=True)
class Counts:
    """Requests sent between two snapshots (see :meth:`CountingStore.snapshot`)."""

    requests: int = 0  # HTTP requests as KubernetesStore.api_requests counts them
    reads: int = 0
    writes: int = 0
    watches: int = 0  # watch streams opened (each is one long-lived GET)
    conflicts: int = 0  # writes the API server refused with 409 Conflict

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.requests + other.requests,
            self.reads + other.reads,
            self.writes + other.writes,
            self.watches + other.watches,
            self.conflicts + other.conflicts,
        )

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.requests - other.requests,
            self.reads - other.reads,
            self.writes - other.writes,
            self.watches - other.watches,
            self.conflicts - other.conflicts,
        )

    @property
    def retries(self) -> int:
        """Requests beyond one per store call: the store's own retries after errors."""
        return self.requests - self.reads - self.writes - self.watches


class CountingStore(KubernetesStore):
    """KubernetesStore counting get/list (reads), writes and watch connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        # Requests sent by connections already closed, so that totals survive close().
        self._closed_requests = 0

    def snapshot(self) -> Counts:
        return Counts(
            requests=self._closed_requests + self.api_requests,
            reads=sum(self.calls[m] for m in READS),
            writes=sum(self.calls[m] for m in WRITES),
            watches=self.calls["watch"],
            conflicts=self.calls["conflict"],
        )

    async def close(self) -> None:
        self._closed_requests += self.api_requests
        await super().close()

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        self.calls["get"] += 1
        return await super().get(kind, name, timeout=timeout)

    async def list(self, kind: Kind) -> ObjectList:
        self.calls["list"] += 1
        return await super().list(kind)

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        self.calls["create"] += 1
        return await super().create(kind, name, spec)

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
        self.calls["replace_status"] += 1
        return await self._conflict_counted(
            super().replace_status(
                kind, name, status, version=version, timeout=timeout, on_sent=on_sent
            )
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
        self.calls["patch_status"] += 1
        return await self._conflict_counted(
            super().patch_status(kind, name, ops, timeout=timeout, on_sent=on_sent)
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
        self.calls["replace_spec"] += 1
        return await self._conflict_counted(
            super().replace_spec(
                kind, name, spec, version=version, timeout=timeout, on_sent=on_sent
            )
        )

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        self.calls["delete"] += 1
        await super().delete(kind, name, version=version)

    async def _conflict_counted(self, write: Any) -> StoredObject:
        from konductor import Conflict

        try:
            result: StoredObject = await write
        except Conflict:
            self.calls["conflict"] += 1
            raise
        return result

    def _raw_watch(  # type: ignore[override]  # same context manager, wider type
        self, kind: Kind, name: str | None, since: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        # Every watch connection (the first and each resume) goes through here.
        self.calls["watch"] += 1
        return super()._raw_watch(kind, name, since)
