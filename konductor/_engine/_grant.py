"""A held grant and the ``async with`` guard around it, shared by every primitive.

A grant is kept alive by a renewal :class:`Entry`. If it is lost while held,
the guard cancels the body it protects and its exit raises the primitive's
:class:`LostError` subclass, chained to the cancellation: never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from konductor import _observe as observe
from konductor._engine._renewal import Entry
from konductor._errors import LostError

log = logging.getLogger("konductor")


class Grant:
    """Something held: a permit, a lock, leadership, a once-run.

    ``token`` is the fencing token (strictly increasing per object), ``lost``
    is set when the grant is lost while held.
    """

    lost_error: type[LostError] = LostError
    what = "grant"

    def __init__(
        self, name: str, token: int, entry: Entry, release: Callable[[Entry], Awaitable[None]]
    ) -> None:
        self.name = name
        self.token = token
        self._entry = entry
        self._release = release
        self.id = entry.id
        self.released = False
        observe.granted(self)

    @property
    def lost(self) -> asyncio.Event:
        return self._entry.lost

    @property
    def is_lost(self) -> bool:
        return self._entry.lost.is_set()

    @property
    def lost_reason(self) -> str | None:
        return self._entry.lost_reason

    def when_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on the client's event loop if the grant is lost.

        For adapters that must act at once (close database connections), not
        at the next ``ensure_held()``. The callback must not block the loop.
        """
        self._entry.on_lost.append(callback)

    def describe(self) -> str:
        """What is held, for messages: ``permit on semaphore 'payments-api' (token 7)``."""
        return f"{self.what} {self.name!r} (token {self.token})"

    def ensure_held(self) -> None:
        """Raise the primitive's :class:`LostError` if the grant was lost or released."""
        if self._entry.lost_reason is not None:
            raise self.lost_error(f"{self.describe()} was lost: {self._entry.lost_reason}")
        if self.released:
            raise self.lost_error(f"{self.describe()} was released")

    async def release(self) -> None:
        """Give the grant back. Idempotent; never raises for a grant already gone.

        A lost grant holds nothing any more: its entry is removed in the
        background, so that a store that does not answer (the likely reason it
        was lost) cannot delay the caller, nor the ``LostError`` it is about to
        raise.

        Raises:
            StoreUnavailable: a held grant's release could not be written in
                time; its entry then expires for others after its TTL.
        """
        if self.released:
            return
        self.released = True
        observe.released(self)
        if self.is_lost:
            in_background(self._release(self._entry), self.describe())
            return
        await self._release(self._entry)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} token={self.token}>"


G = TypeVar("G", bound=Grant)

_background: set[asyncio.Task[None]] = set()


def in_background(release: Awaitable[None], what: str) -> None:
    """Run the clean-up of something lost without waiting for it (a strong reference is kept)."""

    async def run() -> None:
        try:
            await release
        except Exception as exc:
            log.info("could not clean up lost %s (it expires after its TTL): %s", what, exc)

    task = asyncio.ensure_future(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


class Guarded(Generic[G]):
    """``async with``: obtain a grant, cancel the body if it is lost, release on exit.

    Raises (on exit):
        LostError subclass: the grant was lost while the body ran; the body was
            cancelled.
    """

    def __init__(self, obtain: Callable[[], Awaitable[G]]) -> None:
        self.obtain = obtain  # the unguarded acquisition (SyncGuard drives it from its thread)
        self._grant: G | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled_by_us = False

    async def __aenter__(self) -> G:
        grant = await self.obtain()
        self._grant = grant
        self._task = asyncio.current_task()
        grant._entry.on_lost.append(self._on_lost)
        if grant.is_lost:  # lost before we could watch for it
            self._on_lost(grant.lost_reason or "lost")
        return grant

    def _on_lost(self, reason: str) -> None:
        if self._task is not None and not self._task.done():
            self._cancelled_by_us = True
            self._task.cancel(f"konductor: lost: {reason}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        grant = self._grant
        assert grant is not None
        with contextlib.suppress(ValueError):
            grant._entry.on_lost.remove(self._on_lost)
        try:
            await asyncio.shield(grant.release())
        except Exception:
            log.warning("could not release %s; it expires after its TTL", grant.describe())
        if grant.is_lost and self._cancelled_by_us and self._task is not None:
            self._task.uncancel()
        self.raise_if_lost(grant, exc, "; the guarded block was cancelled")

    @staticmethod
    def raise_if_lost(grant: Grant, cause: BaseException | None, consequence: str = "") -> None:
        """The exit rule of every guard, async or sync: a lost grant is never silent.

        Raises:
            LostError subclass: ``grant`` was lost while held (chained to ``cause``).
        """
        if grant.is_lost:
            raise grant.lost_error(
                f"{grant.describe()} was lost while held: {grant.lost_reason}{consequence}"
            ) from cause
