"""Watch-driven waiting on one or several objects, and updates that trust no stale cache.

Barrier, gate and wait-group waiters do not hold anything: they sleep until
one of the objects they depend on changes (each object's :class:`Hub` keeps
one shared watch per process) or until their deadline, and decide again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from konductor._engine._clock import Clock
from konductor._engine._hub import Hub
from konductor._store._base import JSON, StoredObject

T = TypeVar("T")


def deadline_of(clock: Clock, timeout: float | None) -> float | None:
    """The monotonic deadline for ``timeout`` seconds from now (``None``: never)."""
    return None if timeout is None else clock.monotonic() + timeout


def expired(clock: Clock, deadline: float | None) -> bool:
    return deadline is not None and clock.monotonic() >= deadline


async def wait_any(seen: Sequence[tuple[Hub, int]], until: float | None) -> None:
    """Return once any hub's ``changes`` exceeds its seen count, or at ``until``.

    ``seen`` pairs each hub with its ``changes`` counter as read before the
    caller last decided, so a change in between is never missed.
    """
    if any(hub.changes > count for hub, count in seen):
        return
    if len(seen) == 1:
        hub, count = seen[0]
        await hub.wait_change(count, until)
        return
    tasks = [asyncio.ensure_future(hub.wait_change(count, until)) for hub, count in seen]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:  # a watch that ended for good: waiting longer would wait forever
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def watch_until(
    hub: Hub,
    check: Callable[[StoredObject | None], Awaitable[T | None]],
    *,
    clock: Clock,
    deadline: float | None,
    timed_out: Callable[[StoredObject | None], BaseException],
) -> T:
    """Decide on ``hub``'s object until ``check`` returns a result, watch-driven.

    ``check`` sees the cached object (``None`` if it does not exist) and returns
    the result, or ``None`` to keep waiting; it may write. The watch is held
    only while waiting and let go on every exit.

    Raises:
        whatever ``timed_out(obj)`` returns, once ``deadline`` passes.
    """
    watching = False
    try:
        while True:
            seen = hub.changes
            result = await check(hub.obj)
            if result is not None:
                return result
            if expired(clock, deadline):
                raise timed_out(hub.obj)
            if not watching:
                hub.retain_watch()
                watching = True
            await wait_any([(hub, seen)], deadline)
    finally:
        if watching:
            hub.release_watch()


async def update_fresh(
    hub: Hub, decide: Callable[[StoredObject], tuple[JSON | None, T]]
) -> tuple[T, StoredObject]:
    """:meth:`Hub.update`, deciding "no write" only on an object read just now.

    A write is checked by the compare-and-swap; a decision to write nothing
    (already open, already arrived, would go negative) is not, and a hub that
    is not watching may hold an old copy. If ``decide`` wrote nothing on the
    cached copy, read the object and decide again.

    Raises:
        NotFound: the object does not exist.
    """
    cached = hub.obj
    result, obj = await hub.update(decide)
    if cached is not None and obj is cached:
        await hub.refresh()
        result, obj = await hub.update(decide)
    return result, obj
