"""The store protocol: named JSON objects with an opaque version.

Everything konductor guarantees rests on one operation here: a write that
succeeds only if the object still has the version the writer read
(compare-and-swap). On Kubernetes the version is ``metadata.resourceVersion``
and a stale write is the API server's 409 Conflict. Nothing relies on a
client-side lock for cross-process safety.

Versions are opaque strings to callers. Stores do promise that versions of one
namespace increase over time (etcd revisions on Kubernetes, a counter in the
memory and local stores); the resumable watch relies on that to drop
duplicates after a reconnect.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from konductor._names import validate_name
from konductor._store._kinds import Kind
from konductor._store._objects import (
    JSON,
    EventType,
    ObjectList,
    StoredObject,
    WatchEvent,
    copy_json,
    version_newer,
)
from konductor._store._watch import ResumableWatch
from konductor._typing import ExcInfo

# Re-exported: the rest of konductor imports these from here.
__all__ = (
    "JSON",
    "EventType",
    "ObjectList",
    "Store",
    "StoredObject",
    "WatchEvent",
    "copy_json",
    "version_newer",
)


class Store(abc.ABC):
    """Versioned-object store in one namespace.

    Every method may raise :class:`~konductor.StoreUnavailable` once the store's
    own retries are exhausted, and :class:`~konductor.Forbidden` when the
    caller lacks permission.
    """

    namespace: str

    @abc.abstractmethod
    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        """Read one object, within ``timeout`` seconds (``None``: the store's own bound).

        Raises:
            NotFound: no object of that kind and name.
            CRDNotInstalled: the kind itself is not installed in the cluster.
        """

    @abc.abstractmethod
    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        """Create an object with ``spec`` and an empty status.

        Raises:
            AlreadyExists: an object with that name exists.
            Invalid: the spec violates the kind's schema.
        """

    @abc.abstractmethod
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
        """Write the status if the object is still at ``version``.

        The call, retries included, ends within ``timeout`` seconds (``None``:
        the store's own bound). ``on_sent`` is called just before each attempt
        is sent, so that a holder can measure its deadline from the attempt
        that succeeded.

        Raises:
            Conflict: the object changed since ``version``.
            NotFound: the object no longer exists.
            InvalidArgument: the kind has no status (a Lease).
        """

    @abc.abstractmethod
    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[JSON],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        """Apply a guarded JSON Patch (:mod:`._jsonpatch`) to the status, atomically.

        The operations apply in order to the object's *current* state, with no
        version precondition: the ``test`` operations say what the write
        depends on, and a change elsewhere in the object does not make it
        fail. Paths are into ``{"spec": ..., "status": ...}``; only the status
        may change. ``timeout`` and ``on_sent`` as for :meth:`replace_status`.

        Raises:
            Conflict: a ``test`` operation failed (nothing was applied).
            NotFound: the object no longer exists.
            Invalid: the patched status violates the kind's schema.
            InvalidArgument: the kind has no status (a Lease), or the patch
                would change something other than the status.
        """

    @abc.abstractmethod
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
        """Write the spec if the object is still at ``version``; the status is kept.

        So is the metadata others own (labels, annotations, finalizers, owner
        references): a spec write changes nothing but the spec. ``timeout`` and
        ``on_sent`` as for :meth:`replace_status`.

        Raises:
            Conflict: the object changed since ``version``.
            NotFound: the object no longer exists.
            Invalid: the spec violates the kind's schema.
        """

    @abc.abstractmethod
    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        """Delete an object, only if it is still at ``version`` when one is given.

        Raises:
            NotFound: no object of that kind and name.
            Conflict: ``version`` was given and the object changed since.
        """

    @abc.abstractmethod
    async def list(self, kind: Kind) -> ObjectList:
        """All objects of ``kind`` and the version to watch from for later changes."""

    def watch(
        self,
        kind: Kind,
        *,
        since: str,
        name: str | None = None,
        seen: Iterable[StoredObject] = (),
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        """Watch changes to objects of ``kind`` (or the one ``name``) after ``since``.

        Use as ``async with store.watch(...) as events: async for ev in events``;
        leaving the block closes the stream. Every change after ``since`` is
        delivered once, in order. Dropped connections and server time-outs are
        resumed transparently; if the store has compacted away the version to
        resume from, the watch lists again and delivers the current state of
        each object that changed (intermediate states collapsed) as MODIFIED,
        and DELETED for each object it knew that is gone. ``seen`` are the
        objects as the caller knows them at ``since`` (the list or the get it
        watches from): a recovery compares against them, so that an object
        deleted in the gap is still reported DELETED.

        Raises (while iterating):
            CRDNotInstalled, Forbidden: as for :meth:`get`.
        """
        if name is not None:
            validate_name(name)
        return ResumableWatch(
            kind=kind,
            name=name,
            since=since,
            seen=seen,
            open_raw=lambda version: self._raw_watch(kind, name, version),
            relist=lambda: self.list(kind),
        )

    @abc.abstractmethod
    def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """One stream of WatchEvent / Bookmark items from ``since``; may end or fail.

        Raises Expired when ``since`` is no longer kept, StoreUnavailable when
        the connection fails; :meth:`watch` resumes and recovers from both.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store must not be used afterwards."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: *ExcInfo) -> None:
        await self.close()
