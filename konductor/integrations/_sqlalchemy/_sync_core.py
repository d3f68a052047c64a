"""The blocking reservation of a sync ``Engine``: a SyncClient and a maintenance thread.

It decides nothing itself: it runs the plans of :mod:`._plans` on the
SyncClient (whose loop thread keeps the grants renewed) and counts through
:class:`~._slots.Core`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator
from typing import TypeVar, cast

from sqlalchemy.util import queue as sqla_queue

from konductor import KonductorError, SyncClient, SyncGrant
from konductor import _integration as seam
from konductor.integrations._sqlalchemy import _plans as plans
from konductor.integrations._sqlalchemy import _process
from konductor.integrations._sqlalchemy._slots import (
    Core,
    Handle,
    Item,
    Settings,
    StoreSource,
)

log = logging.getLogger("konductor.sqlalchemy")
T = TypeVar("T")


def _release_sync(handle: Handle) -> None:
    assert isinstance(handle, SyncGrant)
    try:
        handle.release()
    except KonductorError as exc:
        log.warning("could not release %r (the permits expire after their TTL): %s", handle, exc)


class SyncCore(Core):
    """Reservation for a sync ``Engine``: SyncClient calls, a daemon maintenance thread."""

    def __init__(self, settings: Settings, client: SyncClient | None, store: StoreSource) -> None:
        self._given = client
        self._store = store
        self._own: SyncClient | None = None
        super().__init__(settings)

    def _new_queue(self) -> sqla_queue.QueueCommon[Item]:
        return sqla_queue.Queue(0, use_lifo=True)

    def _reset(self) -> None:
        super()._reset()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()

    def client(self) -> SyncClient:
        if self._given is not None:
            return self._given
        if self._own is None:
            # One SyncClient for the engine's lifetime: built from a store factory
            # it rebuilds itself in a forked child (see konductor._sync).
            self._own = SyncClient(store=self._store)
        return self._own

    def wake(self) -> None:
        self._wake.set()

    def _lost_now(self, reason: str) -> None:
        # On the SyncClient's loop thread, which must not wait for the database.
        threading.Thread(
            target=self._collect_now, name="konductor-sqlalchemy-lost", daemon=True
        ).start()

    def _collect_now(self) -> None:
        try:
            self.collect_lost()
        except Exception:
            log.exception("konductor SQLAlchemy: acting on a lost grant failed")
        self._wake.set()  # the maintenance thread releases what was lost

    # -- start ------------------------------------------------------------------------

    def before_checkout(self) -> None:
        self.check_process()
        if not self.started:
            self.start()

    def start(self) -> None:
        """Reserve (reserve mode) and start the maintenance thread; idempotent.

        Raises:
            AcquireTimeout: not even ``min_connections`` permits within ``reserve_timeout``.
        """
        with self._start_lock:
            self.check_process()
            if self.started:
                return
            generation = self.generation
            if self.s.mode == "reserve":
                self._run(plans.reservation(self, generation))
            with self._lock:
                self.started = True
            threading.Thread(
                target=self._maintain,
                args=(generation,),
                name=f"konductor-sqlalchemy-{self.s.semaphore}",
                daemon=True,
            ).start()
            _process.exit_hooks_in_this_process()

    def _run(self, plan: Generator[plans.Step, plans.Result, T]) -> T:
        """Drive ``plan``: each request it yields, made on the SyncClient, blocking."""
        s, client, run = self.s, self.client(), plans.Run(plan)
        while (step := run.next()) is not None:
            try:
                if isinstance(step, plans.Look):
                    run.result = client.admin.describe("semaphore", s.semaphore)
                elif s.rebalance and isinstance(step, plans.Try | plans.Wait):
                    run.result = seam.sync_acquire_semaphore_noted(
                        client,
                        plans.noted_request(s, step),
                        self.note(),
                        blocking=isinstance(step, plans.Wait),
                    )
                elif isinstance(step, plans.Try):
                    run.result = client.try_acquire_semaphore(
                        s.semaphore, step.permits, count=step.count, ttl=s.ttl
                    )
                elif isinstance(step, plans.Wait):
                    run.result = client.acquire_semaphore(
                        s.semaphore,
                        step.permits,
                        count=step.count,
                        ttl=s.ttl,
                        timeout=s.reserve_timeout,
                    )
                else:
                    _release_sync(step.handle)
            except KonductorError as exc:
                run.failure = exc
        return cast(T, run.value)

    # -- background -------------------------------------------------------------------

    def _maintain(self, generation: int) -> None:
        while True:
            with self._lock:
                if generation != self.generation or self.pid != os.getpid():
                    return
            try:
                self.collect_lost()
                for handle in self.take_lost():
                    _release_sync(handle)
                for handle in self.take_given():
                    _release_sync(handle)
                if self.look_due():
                    self._run(plans.rebalance(self, generation))
                    self.reclaim_idle()
                elif self.grow_due():
                    self._run(plans.grow(self, generation))
            except Exception:
                log.exception("konductor SQLAlchemy maintenance failed; retrying")
            self._wake.wait(self.next_wait())
            self._wake.clear()

    # -- per-connection mode ----------------------------------------------------------

    def acquire_one(self) -> Handle:
        return self._run(plans.one(self))

    def release_one(self, handle: Handle) -> None:
        self.forget(handle)
        _release_sync(handle)

    # -- release ------------------------------------------------------------------------

    def release(self) -> None:
        """Close idle connections, then give the permits back; the engine may start again."""
        with self._start_lock:
            if self.pid != os.getpid():
                self.after_fork()
                return
            handles, in_use = self.detach_all()
            self._wake.set()
            self.warn_in_use_at_release(in_use)
            for handle in handles:
                _release_sync(handle)

    def close(self) -> None:
        self.release()
        self.closed = True
        if self._own is not None:
            own, self._own = self._own, None
            own.close()

    def shutdown(self) -> None:
        with self._lock:
            in_use = self.in_use
        if in_use:
            # Threads still use the engine while the interpreter winds down:
            # keep the permits (they expire after the TTL) rather than
            # release them under connections that are still open.
            log.info(
                "process exit with %d connection(s) in use on semaphore %r: the permits "
                "are left to expire after their TTL",
                in_use,
                self.s.semaphore,
            )
            return
        if self.started:
            # Only release: threads that outlive the main thread may still use
            # the engine (they would reserve again; those permits then expire).
            self.release()
