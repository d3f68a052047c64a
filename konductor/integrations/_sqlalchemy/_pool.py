"""The two connection pools a CoordinatedEngine installs into its SQLAlchemy engine.

The limit lives in the pool, not in a wrapper around ``connect()``, so that
every way of reaching the database — ``engine.connect()``, ``begin()``, a
``Session`` or ``AsyncSession`` bound to the engine, ``raw_connection()`` —
is counted. These are ordinary :class:`sqlalchemy.pool.Pool` subclasses
(``_do_get`` / ``_do_return_conn`` / ``dispose`` / ``recreate``, the
extension points SQLAlchemy's own pools implement), so pool events, pre-ping,
recycle and reset-on-return behave as usual.

- :class:`ReservedPool` (default): checkouts take slots from the process's
  reservation (:mod:`._slots`); no API call per checkout. The queue is LIFO
  (like ``pool_use_lifo=True``), so a quiet process keeps few connections open.
- :class:`PerConnectionPool`: each checkout acquires one permit (an API call,
  possibly a wait in the semaphore's queue) and opens a fresh connection; the
  checkin closes it and releases the permit. Costly: meant for a few
  long-held batch connections.

``Engine.dispose()`` on the underlying engine closes idle connections and
keeps the reservation (the recreated pool shares it); releasing the permits
is :meth:`CoordinatedEngine.dispose`'s job.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool, QueuePool
from sqlalchemy.util import queue as sqla_queue

from konductor import InvalidArgument
from konductor.integrations._sqlalchemy._slots import (
    Core,
    Item,
    Settings,
    severed_is_disconnect,
)


class _CoordinatedPool(Pool):
    def __init__(self, creator: Any, *, core: Core, timeout: float, **kw: Any) -> None:
        super().__init__(creator, **kw)
        self._core = core
        self._timeout = timeout

    def recreate(self) -> _CoordinatedPool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            core=self._core,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def timeout(self) -> float:
        return self._timeout

    def status(self) -> str:
        return f"{type(self).__name__} {self._core.status()}"


class ReservedPool(_CoordinatedPool):
    """A pool exactly as large as the permits this process holds (no overflow)."""

    def _do_get(self) -> ConnectionPoolEntry:
        core = self._core
        core.before_checkout()
        deadline = time.monotonic() + self._timeout
        while True:
            core.collect_lost()
            item: Item = None
            idle = True
            try:
                item = core.queue.get_nowait()
            except sqla_queue.Empty:
                idle = False
            if not idle:  # (outside the except: a timeout is not "caused" by Empty)
                item = self._wait(deadline)
            if not core.claim(item):
                continue  # paid a debt (a lost permit) with it: take the next
            if item is not None:
                return item
            try:
                record = self._create_connection()
            except BaseException:
                core.unclaim_token()
                raise
            if not core.created(record):
                continue  # a loss came while it was opened: it paid the debt
            return record

    def _wait(self, deadline: float) -> Item:
        core = self._core
        core.note_demand()
        remaining = deadline - time.monotonic()
        got = False
        item: Item = None
        if remaining > 0:
            core.waiting(1)
            try:
                item = core.queue.get(True, remaining)
                got = True
            except sqla_queue.Empty:
                pass
            finally:
                core.waiting(-1)
        if got:
            return item
        raise sa_exc.TimeoutError(
            f"konductor: no connection free within {self._timeout:g}s: this process holds "
            f"{core.held} permit(s) of semaphore {core.s.semaphore!r} ({core.s.pool_size} "
            f"wanted), all in use ({core.status()}); raise pool_timeout, or the cluster's "
            "max_connections",
            code="3o7r",
        )

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self._core.give_back(record)

    def dispose(self) -> None:
        self._core.close_idle()
        self.logger.info("Pool disposed. %s", self.status())


class PerConnectionPool(_CoordinatedPool):
    """One permit per checkout, held while the connection is checked out."""

    def _do_get(self) -> ConnectionPoolEntry:
        core = self._core
        core.before_checkout()
        handle = core.acquire_one()
        try:
            record = self._create_connection()
        except BaseException:
            core.release_one(handle)
            raise
        core.bind(record, handle)
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        core = self._core
        handle = core.unbind(record)
        if handle is None:  # a parent's connection, after a fork
            return
        try:
            record.close()
        finally:
            core.release_one(handle)

    def dispose(self) -> None:
        pass


def install(engine_pool_owner: Any, core: Core, settings: Settings) -> None:
    """Replace ``engine_pool_owner.pool`` (an Engine's) with a coordinated pool.

    The new pool keeps the old one's creator, dialect, events and options (the
    same arguments ``QueuePool.recreate()`` carries over); the old pool is
    disposed.

    Raises:
        InvalidArgument: the engine uses a pool that cannot be coordinated.
    """
    old = engine_pool_owner.pool
    if not isinstance(old, QueuePool | NullPool):
        raise InvalidArgument(
            f"the engine uses {type(old).__name__}; a CoordinatedEngine replaces a QueuePool "
            "(the default) or a NullPool with its own pool"
        )
    timeout = old.timeout() if isinstance(old, QueuePool) else 30.0
    cls = ReservedPool if settings.mode == "reserve" else PerConnectionPool
    new = cls(
        old._creator,
        core=core,
        timeout=timeout,
        recycle=old._recycle,
        echo=old.echo,
        logging_name=old._orig_logging_name,
        reset_on_return=old._reset_on_return,
        pre_ping=old._pre_ping,
        _dispatch=old.dispatch,
        dialect=old._dialect,
    )
    old.dispose()
    engine_pool_owner.pool = new
    if not event.contains(engine_pool_owner, "handle_error", severed_is_disconnect):
        event.listen(engine_pool_owner, "handle_error", severed_is_disconnect)
