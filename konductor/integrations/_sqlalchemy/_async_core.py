"""The async reservation of an ``AsyncEngine``: the async Client and a maintenance task.

It decides nothing itself: it awaits the plans of :mod:`._plans` on the
async Client and counts through :class:`~._slots.Core`. Pool code runs in
SQLAlchemy's greenlet on the event loop; it reaches the client through
``await_`` and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast

import sqlalchemy.util as sa_util
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util import queue as sqla_queue

from konductor import Client, KonductorError
from konductor import _integration as seam
from konductor.integrations._sqlalchemy import _plans as plans
from konductor.integrations._sqlalchemy._slots import (
    Core,
    Handle,
    Item,
    Settings,
    StoreSource,
    permit_of,
)
from konductor.store import Store

log = logging.getLogger("konductor.sqlalchemy")
T = TypeVar("T")

# SQLAlchemy 2.1 calls it await_, 2.0 await_only: both run a coroutine from the
# greenlet SQLAlchemy's asyncio layer runs pool code in.
await_: Callable[[Any], Any] = getattr(sa_util, "await_", None) or sa_util.await_only

_background: set[asyncio.Task[None]] = set()  # loss handling in flight (strong references)


class AsyncCore(Core):
    """Reservation for an ``AsyncEngine``: the async Client and a maintenance task.

    Pool code runs in SQLAlchemy's greenlet on the event loop; it reaches the
    async client through ``await_`` and never blocks the loop.
    """

    is_async = True

    def __init__(self, settings: Settings, client: Client | None, store: StoreSource) -> None:
        self._given = client
        self._store = store
        self._own: Client | None = None
        super().__init__(settings)

    def _new_queue(self) -> sqla_queue.QueueCommon[Item]:
        return sqla_queue.AsyncAdaptedQueue(0, use_lifo=True)

    def _reset(self) -> None:
        super()._reset()
        self._own = None  # a parent's client: its connections and loop are not ours
        self._start_lock: asyncio.Lock | None = None
        self._wake_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def client(self) -> Client:
        if self._given is not None:
            return self._given
        if self._own is None:
            source = self._store
            store = source() if callable(source) and not isinstance(source, Store) else source
            self._own = Client(store)
        return self._own

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def _lost_now(self, reason: str) -> None:
        # On the engine's event loop (the client's): close in a task of its own.
        task = asyncio.get_running_loop().create_task(self._collect_now())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _collect_now(self) -> None:
        try:
            await greenlet_spawn(self.collect_lost)
        except Exception:
            log.exception("konductor SQLAlchemy: acting on a lost grant failed")
        self.wake()

    # -- start ------------------------------------------------------------------------

    def before_checkout(self) -> None:
        """From the pool, inside SQLAlchemy's greenlet."""
        self.check_process()
        if not self.started:
            await_(self.start())

    async def start(self) -> None:
        """Reserve (reserve mode) and start the maintenance task; idempotent.

        Raises:
            AcquireTimeout: not even ``min_connections`` permits within ``reserve_timeout``.
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            self.check_process()
            if self.started:
                return
            generation = self.generation
            if self.s.mode == "reserve":
                await self._run(plans.reservation(self, generation))
            with self._lock:
                self.started = True
            self._wake_event = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._maintain(generation), name=f"konductor-sqlalchemy-{self.s.semaphore}"
            )

    async def _run(self, plan: Generator[plans.Step, plans.Result, T]) -> T:
        """Drive ``plan``: each request it yields, awaited on the async Client."""
        s, client, run = self.s, self.client(), plans.Run(plan)
        while (step := run.next()) is not None:
            try:
                if isinstance(step, plans.Look):
                    run.result = await client.admin.describe("semaphore", s.semaphore)
                elif s.rebalance and isinstance(step, plans.Try | plans.Wait):
                    run.result = await seam.acquire_semaphore_noted(
                        client,
                        plans.noted_request(s, step),
                        self.note(),
                        blocking=isinstance(step, plans.Wait),
                    )
                elif isinstance(step, plans.Try):
                    run.result = await client.try_acquire_semaphore(
                        s.semaphore, step.permits, count=step.count, ttl=s.ttl
                    )
                elif isinstance(step, plans.Wait):
                    run.result = await client.acquire_semaphore(
                        s.semaphore,
                        step.permits,
                        count=step.count,
                        ttl=s.ttl,
                        timeout=s.reserve_timeout,
                    )
                else:
                    with contextlib.suppress(KonductorError):
                        await permit_of(step.handle).release()
            except KonductorError as exc:
                run.failure = exc
        return cast(T, run.value)

    # -- background -------------------------------------------------------------------

    async def _maintain(self, generation: int) -> None:
        try:
            while generation == self.generation and self.pid == os.getpid():
                try:
                    await greenlet_spawn(self.collect_lost)  # may close connections
                    for handle in self.take_lost():
                        with contextlib.suppress(KonductorError):
                            await permit_of(handle).release()
                    for handle in self.take_given():
                        with contextlib.suppress(KonductorError):
                            await permit_of(handle).release()
                    if self.look_due():
                        await self._run(plans.rebalance(self, generation))
                        await greenlet_spawn(self.reclaim_idle)  # may close connections
                    elif self.grow_due():
                        await self._run(plans.grow(self, generation))
                except Exception:
                    log.exception("konductor SQLAlchemy maintenance failed; retrying")
                wake = self._wake_event
                assert wake is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.next_wait())
                wake.clear()
        except asyncio.CancelledError:
            if generation == self.generation and self.pid == os.getpid():
                # Cancelled from outside while still reserved: the event loop is
                # shutting down (the end of asyncio.run) without dispose(). Give the
                # connections and permits back now rather than after the TTL.
                with contextlib.suppress(Exception):
                    await self.close()
            raise

    # -- per-connection mode (called inside SQLAlchemy's greenlet) ----------------------

    def acquire_one(self) -> Handle:
        handle: Handle = await_(self._run(plans.one(self)))
        return handle

    def release_one(self, handle: Handle) -> None:
        self.forget(handle)
        try:
            await_(permit_of(handle).release())
        except KonductorError as exc:
            log.warning("could not release a connection's permit (it expires): %s", exc)

    # -- release ------------------------------------------------------------------------

    async def release(self) -> None:
        """Close idle connections, then give the permits back; the engine may start again."""
        if self.pid != os.getpid():
            self.after_fork()
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:  # not in the middle of a reservation
            await self._release()

    async def _release(self) -> None:
        handles, in_use = await greenlet_spawn(self.detach_all)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.warn_in_use_at_release(in_use)
        for handle in handles:
            try:
                await permit_of(handle).release()
            except KonductorError as exc:
                log.warning("could not release permits on %r (they expire): %s", handle, exc)

    async def close(self) -> None:
        await self.release()
        self.closed = True
        if self._own is not None:
            own, self._own = self._own, None
            await own.close()
