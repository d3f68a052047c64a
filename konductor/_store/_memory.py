"""An in-process store with the same semantics as the Kubernetes one.

For fast unit tests and for users' own tests. It keeps a revision counter per
store (like etcd's), conflicts on stale versions, and a bounded history so
that a watch can start from a past version; :meth:`MemoryStore.compact` drops
that history to exercise the same expired-version recovery that a compacted
etcd forces. It is bound to one event loop and is not shared between
processes (use the local store for that).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from konductor._errors import AlreadyExists, Conflict, Expired, InvalidArgument, NotFound
from konductor._names import validate_name, validate_namespace
from konductor._store._base import (
    JSON,
    EventType,
    ObjectList,
    Store,
    StoredObject,
    WatchEvent,
    copy_json,
)
from konductor._store._jsonpatch import patched_status
from konductor._store._kinds import Kind
from konductor._store._schema import validate_spec, validate_status
from konductor._store._watch import RawEvent


def _copy(obj: StoredObject) -> StoredObject:
    return replace(obj, spec=copy_json(obj.spec), status=copy_json(obj.status))


class MemoryStore(Store):
    """Versioned objects in a dict, with watch history.

    ``history`` bounds how many past changes a watch can resume from; older
    versions raise the same recovery as a compacted Kubernetes watch.
    """

    def __init__(self, namespace: str = "default", *, history: int = 10_000) -> None:
        self.namespace = validate_namespace(namespace)
        self._objects: dict[tuple[Kind, str], StoredObject] = {}
        self._revision = 0
        self._history: deque[tuple[int, WatchEvent]] = deque(maxlen=history)
        self._oldest = 0  # watches from a revision below this are expired
        self._changed: asyncio.Condition | None = None
        self._closed = False

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _record(self, type_: EventType, obj: StoredObject) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._oldest = self._history[0][0]
        self._history.append((self._revision, WatchEvent(type_, obj)))
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _round_trip(self) -> None:
        # Every call yields to the event loop, as a network round trip would, so
        # that concurrent callers really interleave between a read and a write.
        await asyncio.sleep(0)

    def _existing(self, kind: Kind, name: str) -> StoredObject:
        validate_name(name)
        try:
            return self._objects[(kind, name)]
        except KeyError:
            raise NotFound(f"{kind} {name!r} not found in namespace {self.namespace!r}") from None

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        await self._round_trip()
        return _copy(self._existing(kind, name))

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        validate_name(name)
        await self._round_trip()
        if (kind, name) in self._objects:
            raise AlreadyExists(f"{kind} {name!r} already exists in namespace {self.namespace!r}")
        validate_spec(kind, name, spec)
        obj = StoredObject(
            kind, name, self._next_version(), copy_json(spec), {}, uid=str(uuid.uuid4())
        )
        self._objects[(kind, name)] = obj
        await self._record("ADDED", obj)
        return _copy(obj)

    def _check_version(self, current: StoredObject, version: str) -> None:
        if current.version != version:
            raise Conflict(
                f"{current.kind} {current.name!r} changed since version {version} "
                f"(now {current.version}); read it again and retry"
            )

    async def _replace(self, current: StoredObject, **changes: Any) -> StoredObject:
        obj = replace(current, version=self._next_version(), **changes)
        self._objects[(current.kind, current.name)] = obj
        await self._record("MODIFIED", obj)
        return _copy(obj)

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
        def replaced(current: StoredObject) -> JSON:
            self._check_version(current, version)
            return copy_json(status)

        return await self._write_status(kind, name, on_sent, replaced)

    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[JSON],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        def patched(current: StoredObject) -> JSON:
            return patched_status(f"{kind} {name!r}", current.spec, current.status, ops)

        return await self._write_status(kind, name, on_sent, patched)

    async def _write_status(
        self,
        kind: Kind,
        name: str,
        on_sent: Callable[[], None] | None,
        new_status: Callable[[StoredObject], JSON],
    ) -> StoredObject:
        """Write the status ``new_status`` makes of the current object (the one
        path of replace and patch: kind check, send, read, validate, record)."""
        if not kind.has_status:
            raise InvalidArgument(f"{kind} has no status; write its spec instead")
        if on_sent is not None:
            on_sent()
        await self._round_trip()
        current = self._existing(kind, name)
        status = new_status(current)
        validate_status(kind, name, status)
        return await self._replace(current, status=status)

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
        if on_sent is not None:
            on_sent()
        await self._round_trip()
        current = self._existing(kind, name)
        self._check_version(current, version)
        validate_spec(kind, name, spec)
        return await self._replace(current, spec=copy_json(spec))

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        await self._round_trip()
        current = self._existing(kind, name)
        if version is not None:
            self._check_version(current, version)
        del self._objects[(kind, name)]
        await self._record("DELETED", replace(current, version=self._next_version()))

    async def list(self, kind: Kind) -> ObjectList:
        await self._round_trip()
        items = tuple(
            _copy(obj)
            for (k, _), obj in sorted(self._objects.items(), key=lambda kv: kv[0][1])
            if k == kind
        )
        return ObjectList(items, str(self._revision))

    def compact(self) -> None:
        """Forget all history, as an etcd compaction does: older watch versions expire."""
        self._history.clear()
        self._oldest = self._revision

    @asynccontextmanager
    async def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AsyncIterator[AsyncIterator[RawEvent]]:
        try:
            start = int(since)
        except ValueError:
            raise InvalidArgument(f"not a version of this store: {since!r}") from None
        if start < self._oldest:
            raise Expired(f"version {since} has been compacted (oldest kept: {self._oldest})")

        async def events() -> AsyncIterator[RawEvent]:
            position = start
            cond = self._condition()
            while True:
                if position < self._oldest:
                    raise Expired(f"version {position} has been compacted")
                pending = [
                    ev
                    for rev, ev in self._history
                    if rev > position
                    and ev.object.kind == kind
                    and (name is None or ev.object.name == name)
                ]
                if pending:
                    for ev in pending:
                        position = max(position, int(ev.object.version))
                        yield WatchEvent(ev.type, _copy(ev.object))
                    continue
                async with cond:
                    if self._revision > position:
                        position = self._revision
                        continue
                    await cond.wait()

        yield events()
