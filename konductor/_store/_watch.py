"""A watch that survives dropped connections, server time-outs and compaction.

Each store provides a *raw* watch (one stream from one version, which may end
or fail) and a list. This module turns them into the stream the Store
protocol promises: every change after a version, once, in order.

- A stream that ends (server time-out) or breaks (network) is reopened from
  the last version delivered or bookmarked, after a jittered backoff on errors.
- A version the store no longer keeps (Kubernetes 410 Expired) is recovered the
  way informers do: list again, deliver the current state of each object newer
  than what the caller saw, DELETED for the known objects that are gone, and
  watch again from the list's version.
- Anything already delivered (same or older version) is never delivered again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._errors import Expired, StoreUnavailable
from konductor._store._kinds import Kind
from konductor._store._objects import ObjectList, StoredObject, WatchEvent, version_newer

log = logging.getLogger("konductor.store")


@dataclass(frozen=True)
class Bookmark:
    """The store has delivered everything up to ``version`` (no object changed)."""

    version: str


RawEvent = WatchEvent | Bookmark
RawOpen = Callable[[str], AbstractAsyncContextManager[AsyncIterator[RawEvent]]]
Relist = Callable[[], Awaitable[ObjectList]]


class ResumableWatch:
    """Async context manager yielding the resumed stream of :class:`WatchEvent`."""

    def __init__(
        self,
        *,
        kind: Kind,
        name: str | None,
        since: str,
        seen: Iterable[StoredObject],
        open_raw: RawOpen,
        relist: Relist,
    ) -> None:
        self._kind = kind
        self._name = name
        self._since = since
        self._known: dict[str, StoredObject] = {
            obj.name: obj for obj in seen if name is None or obj.name == name
        }
        self._open_raw = open_raw
        self._relist = relist
        self._gen: AsyncGenerator[WatchEvent, None] | None = None

    async def __aenter__(self) -> AsyncIterator[WatchEvent]:
        self._gen = self._run()
        return self._gen

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gen is not None:
            await self._gen.aclose()

    def _fresh(self, event: WatchEvent) -> bool:
        """Record ``event`` and say whether the caller has not seen it yet."""
        obj = event.object
        if self._name is not None and obj.name != self._name:
            return False
        known = self._known.get(obj.name)
        if known is not None and not version_newer(obj.version, known.version):
            return False
        if event.type == "DELETED":
            self._known.pop(obj.name, None)
        else:
            self._known[obj.name] = obj
        return True

    async def _recover(self, last: str) -> tuple[list[WatchEvent], str]:
        listed = await self._relist()
        events: list[WatchEvent] = []
        present: set[str] = set()
        for obj in listed.items:
            if self._name is not None and obj.name != self._name:
                continue
            present.add(obj.name)
            known = self._known.get(obj.name)
            changed = (
                version_newer(obj.version, known.version)
                if known is not None
                else version_newer(obj.version, last)
            )
            if changed:
                events.append(WatchEvent("MODIFIED", obj))
        for gone in [n for n in self._known if n not in present]:
            events.append(WatchEvent("DELETED", self._known[gone]))
        for ev in events:
            if ev.type == "DELETED":
                self._known.pop(ev.object.name, None)
            else:
                self._known[ev.object.name] = ev.object
        return events, listed.version

    async def _run(self) -> AsyncGenerator[WatchEvent, None]:
        last = self._since
        backoff = Backoff(initial=0.1, cap=5.0)
        failures = 0  # consecutive server errors since the last event or recovery
        relist = False
        while True:
            try:
                if relist:
                    events, last = await self._recover(last)
                    relist, failures = False, 0
                    for ev in events:
                        yield ev
                async with self._open_raw(last) as raw:
                    async for item in raw:
                        failures = 0
                        backoff.reset()
                        if isinstance(item, Bookmark):
                            last = item.version
                            continue
                        if version_newer(item.object.version, last):
                            last = item.object.version
                        if self._fresh(item):
                            yield item
                # The server ended the stream (its time-out): resume from `last`.
            except Expired:
                observe.watch_resumed("expired")
                log.info("watch of %s from version %s expired; listing again", self._kind, last)
                relist = True
            except StoreUnavailable as exc:
                # A network failure: resume from `last` once it is reachable. The
                # server itself failing twice to resume from `last` (etcd may report
                # a just-compacted version as an internal error) calls for a
                # recovery by listing, which is always correct, only costlier.
                if exc.status is not None:
                    failures += 1
                relist = relist or failures >= 2
                observe.watch_resumed("error")
                delay = backoff.next_delay()
                log.warning(
                    "watch of %s interrupted (%s); resuming in %.2fs", self._kind, exc, delay
                )
                await asyncio.sleep(delay)
