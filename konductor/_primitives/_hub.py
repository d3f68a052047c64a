"""One shared view of one object per client: cache, watch, expiry, CAS loop.

Every waiter and holder of the same object in a process shares its hub, so a
process opens at most one watch per object however many tasks wait on it,
and a write whose response carries the new version keeps the cache current
(an uncontended acquire and release cost two writes and no read).

Waiting is watch-driven: a waiter sleeps until the object changes or until
the earliest moment an entry blocking it could become stale on this
observer's clock, never on a fixed poll interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from konductor._backoff import Backoff
from konductor._errors import Conflict, CorruptState, NotFound, StoreUnavailable
from konductor._primitives._clock import Clock
from konductor._primitives._expiry import ExpiryTracker
from konductor._store._base import JSON, Store, StoredObject, version_newer
from konductor._store._kinds import Kind

log = logging.getLogger("konductor")
T = TypeVar("T")
WATCH_LINGER = 30.0  # seconds an unused watch stays open

Entries = Callable[[StoredObject], list[JSON]]


@dataclasses.dataclass
class _Pending:
    decide: Callable[[StoredObject], tuple[JSON | None, Any]]
    on_sent: Callable[[], None] | None
    future: asyncio.Future[tuple[Any, StoredObject]]


class Hub:
    """Cache, watch and expiry tracking for one (kind, name)."""

    def __init__(self, store: Store, kind: Kind, name: str, clock: Clock, entries: Entries) -> None:
        self.store = store
        self.kind = kind
        self.name = name
        self.clock = clock
        self.tracker = ExpiryTracker()
        self._entries = entries
        self.obj: StoredObject | None = None
        self.changes = 0  # bumped on every observed change
        self._changed = asyncio.Event()  # replaced by a fresh one on every change
        self._watchers = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._pending: list[_Pending] = []
        self._linger: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- observation ------------------------------------------------------------------

    def observe(self, obj: StoredObject | None, *, deleted: bool = False) -> None:
        """Take ``obj`` as the object's latest state (if it is newer than the cache)."""
        if deleted:
            self.obj = None
        elif obj is not None:
            if self.obj is not None and not version_newer(obj.version, self.obj.version):
                return
            self.obj = obj
            self.tracker.observe(self._entries(obj), self.clock.monotonic())
        self.changes += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stale(self, obj: StoredObject) -> set[str]:
        """Ids of ``obj``'s entries this observer has seen unchanged for their full TTL."""
        return self.tracker.stale(self._entries(obj), self.clock.monotonic())

    async def refresh(self) -> StoredObject | None:
        """Read the object from the store (``None`` if it does not exist)."""
        try:
            obj = await self.store.get(self.kind, self.name)
        except NotFound:
            self.observe(None, deleted=True)
            return None
        self.observe(obj)
        return self.obj

    async def current(self) -> StoredObject | None:
        return self.obj if self.obj is not None else await self.refresh()

    # -- compare-and-swap ------------------------------------------------------------

    async def update(
        self,
        decide: Callable[[StoredObject], tuple[JSON | None, T]],
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[T, StoredObject]:
        """Apply ``decide`` to the latest state until the write wins the CAS.

        ``decide`` returns the new status (the new spec for a kind without a
        status, such as a Lease; ``None`` for no write) and a result; it is
        re-run on the fresh object after every conflict. ``on_sent`` is called
        just before each write carrying its change is sent (holders measure
        their deadline from that moment).

        Updates from tasks of this process are *combined*: one writer task
        applies every pending ``decide`` in arrival order, each to the state the
        previous ones produced, and sends a single write. Tasks of one process
        therefore never conflict with each other, and ten waiters queueing at
        once cost one write, exactly as if they had written one after another.

        Raises:
            NotFound: the object does not exist.
        """
        future: asyncio.Future[tuple[Any, StoredObject]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append(_Pending(decide, on_sent, future))
        if self._writer is None or self._writer.done():
            # A task of its own, so that a caller's cancellation never aborts the
            # write others are waiting for.
            self._writer = asyncio.ensure_future(self._write_pending())
        result, obj = await future
        return result, obj

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write_batch(batch)
            except BaseException as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _write_batch(self, batch: list[_Pending]) -> None:
        obj = await self.current()
        reread = False
        write = self.store.replace_status if self.kind.has_status else self.store.replace_spec
        while True:
            if obj is None:
                raise NotFound(f"{self.kind} {self.name!r} not found")
            view = obj
            results: list[Any] = []
            changed: list[_Pending] = []
            try:
                for item in batch:
                    new, result = item.decide(view)
                    results.append(result)
                    if new is not None:
                        changed.append(item)
                        # Kinds with a status subresource keep their state in status;
                        # a Lease keeps it in spec.
                        view = (
                            dataclasses.replace(view, status=new)
                            if self.kind.has_status
                            else dataclasses.replace(view, spec=new)
                        )
            except CorruptState:
                if reread:
                    raise
                # The cached object may predate a repair, and no watch may be open
                # to bring it up to date: decide once more on a fresh read.
                reread = True
                obj = await self.refresh()
                continue
            if not changed:
                for item, result in zip(batch, results, strict=True):
                    item.future.set_result((result, obj))
                return
            for item in changed:
                if item.on_sent is not None:
                    item.on_sent()
            state = view.status if self.kind.has_status else view.spec
            try:
                written = await write(self.kind, self.name, state, version=obj.version)
            except Conflict:
                obj = await self._after_conflict(obj)
                continue
            except NotFound:
                self.observe(None, deleted=True)
                raise
            self.observe(written)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result((result, written))
            return

    async def _after_conflict(self, stale: StoredObject) -> StoredObject | None:
        """The object after a lost CAS: from the open watch if it delivers soon, else read."""
        if self._watch_task is not None and not self._watch_task.done():
            seen = self.changes
            until = self.clock.monotonic() + 0.5
            while self.clock.monotonic() < until:
                if self.obj is not None and version_newer(self.obj.version, stale.version):
                    return self.obj
                await self.wait_change(seen, until)
                seen = self.changes
        return await self.refresh()

    # -- waiting ----------------------------------------------------------------------

    async def wait_change(self, seen_changes: int, until: float | None) -> None:
        """Return once ``changes`` exceeds ``seen_changes`` or at monotonic ``until``."""
        if self.changes > seen_changes:
            return
        await self.clock.wait(self._changed, until)

    def retain_watch(self) -> None:
        """Keep a watch open while at least one waiter or holder needs it."""
        self._watchers += 1
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.ensure_future(self._watch())

    def release_watch(self) -> None:
        """Drop one use; the watch stays open for ``WATCH_LINGER`` seconds of idleness.

        Lingering lets a process that acquires and releases the same object
        again and again keep one watch (and a current cache) instead of
        reopening it every time.
        """
        self._watchers -= 1
        if self._watchers <= 0 and self._watch_task is not None and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(WATCH_LINGER, self._stop_watch)

    def _stop_watch(self) -> None:
        self._linger = None
        if self._watchers <= 0 and self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None

    async def _watch(self) -> None:
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            try:
                obj = self.obj or await self.refresh()
                if obj is None:
                    listed = await self.store.list(self.kind)
                    since, seen = listed.version, []
                    for item in listed.items:
                        if item.name == self.name:
                            self.observe(item)
                            since, seen = item.version, [item]
                else:
                    since, seen = obj.version, [obj]
                async with self.store.watch(
                    self.kind, name=self.name, since=since, seen=seen
                ) as events:
                    async for ev in events:
                        backoff.reset()
                        self.observe(ev.object, deleted=ev.type == "DELETED")
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("watch of %s %r failed: %s", self.kind, self.name, exc)
            except Exception:  # keep waiters informed; they time out on their own
                log.exception("watch of %s %r failed", self.kind, self.name)
            await asyncio.sleep(backoff.next_delay())

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None


def entries_of(*keys: str) -> Entries:
    """An ``Entries`` function reading the listed status arrays."""

    def entries(obj: StoredObject) -> list[JSON]:
        out: list[JSON] = []
        for key in keys:
            value: Any = obj.status.get(key)
            if isinstance(value, list):
                out.extend(e for e in value if isinstance(e, dict))
        return out

    return entries
