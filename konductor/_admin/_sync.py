"""The blocking twin of :class:`Admin`, for :class:`konductor.SyncClient`.

Each method runs its :class:`Admin` namesake on the SyncClient's event-loop
thread; nothing is re-implemented. The watches (``watch``,
``watch_status``) are async iterators and have no blocking twin: use
``Client.admin`` in an ``asyncio`` program for those.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from ._admin import Admin
from ._model import EntryStatus, NamespaceStatus, ObjectStatus, RepairReport

T = TypeVar("T")


class Caller(Protocol):
    """Runs a coroutine function on the SyncClient's loop thread and returns its result."""

    def __call__(self, fn: Callable[[], Awaitable[T]]) -> T: ...


class SyncAdmin:
    """:class:`Admin` for :class:`konductor.SyncClient`: the same methods, blocking."""

    def __init__(self, call: Caller, admin: Callable[[], Admin]) -> None:
        self._call = call
        self._admin = admin

    def _run(self, fn: Callable[[Admin], Awaitable[T]]) -> T:
        return self._call(lambda: fn(self._admin()))

    def describe(self, kind: str, name: str) -> ObjectStatus:
        """See :meth:`Admin.describe`."""
        return self._run(lambda a: a.describe(kind, name))

    def status(
        self, kinds: Iterable[str] | None = None, *, strict: bool = False
    ) -> NamespaceStatus:
        """See :meth:`Admin.status`."""
        return self._run(lambda a: a.status(kinds, strict=strict))

    def force_release(
        self,
        kind: str,
        name: str,
        *,
        holder: str | None = None,
        id: str | None = None,
        everyone: bool = False,
    ) -> tuple[EntryStatus, ...]:
        """See :meth:`Admin.force_release`."""
        return self._run(
            lambda a: a.force_release(kind, name, holder=holder, id=id, everyone=everyone)
        )

    def delete(self, kind: str, name: str, *, force: bool = True) -> ObjectStatus:
        """See :meth:`Admin.delete`."""
        return self._run(lambda a: a.delete(kind, name, force=force))

    def repair(self, kind: str, name: str, *, next_token: int | None = None) -> RepairReport:
        """See :meth:`Admin.repair`."""
        return self._run(lambda a: a.repair(kind, name, next_token=next_token))

    def create_semaphore(
        self, name: str, permits: int, *, update: bool = False
    ) -> tuple[str, ObjectStatus]:
        """See :meth:`Admin.create_semaphore`."""
        return self._run(lambda a: a.create_semaphore(name, permits, update=update))
