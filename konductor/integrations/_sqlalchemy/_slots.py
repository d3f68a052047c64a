"""The slot accounting behind a CoordinatedEngine: permits, slots, idle queue.

Why slots: every pod sizes its pool locally, so the sum over pods overruns
the database. Here a process first *reserves* permits on a cluster semaphore
(one grant of ``count=k`` permits, so a big request is never starved by
smaller ones in the FIFO queue) and then owns exactly that many **slots**.
A slot is either idle in the queue — as an open connection, or as a token
(``None``: a permit whose connection is not opened yet) — or checked out.
A new database connection is opened only by a checkout that took a token,
so open connections never outnumber slots, and slots never outnumber the
permits held. No API call happens per checkout: the pool only counts.

Growing adds grants (``try_acquire`` of one permit, never queueing, so a
process waiting for its first permits is served first) and puts a token per
new permit into the queue, which wakes a waiting checkout at once: that is
how the pool is "resized" without rebuilding it.

Losing a grant (it could not be renewed within its TTL) is logged as an
error and turns its permits into **debt**, paid at once: idle connections and
tokens are dropped, then, if that is not enough, connections in use are
invalidated (the statement in flight is cancelled where the driver can, the
socket closed), until the slots match what is still held. That happens when
the grant's ``lost`` event fires, on the holder's own deadline, so the
database sees the connections go before anyone else can be granted the
permits. New connections beyond what is held are never handed out.

Rebalancing (on by default in reserve mode, see :mod:`._shares`) gives
permits back for fairness the same way, but never takes a connection in
use: the permits to give back become a **surplus** owed by the idle queue
(idle connections are closed, tokens dropped) and by connections as they
come back (closed instead of reused); a permit is released only once its
slot is gone and its connection closed for :data:`RELEASE_GRACE` seconds, so
open connections never outnumber the permits held, and the database has
seen the backend go before anyone else can open one under that permit.

Every structure is per process: after ``fork()`` the child forgets the
parent's grants and connections (without closing them: they are the
parent's) and reserves its own on first use.

This module only counts (no API call, no waiting): the decisions of a
reservation are in :mod:`._plans`, run by the blocking driver
(:mod:`._sync_core`) and the async one (:mod:`._async_core`); the process
hooks are in :mod:`._process`.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import queue as sqla_queue

from konductor import (
    KonductorError,
    Permit,
    SemaphoreLost,
    SyncGrant,
)
from konductor.integrations._sqlalchemy import _process
from konductor.store import Store

log = logging.getLogger("konductor.sqlalchemy")

Mode = Literal["reserve", "per_connection"]
StoreSource = Store | Callable[[], Store] | None
Item = ConnectionPoolEntry | None  # an idle connection, or a token (a permit, no connection yet)
Handle = SyncGrant[Permit] | Permit
#: Seconds between the background checks for a lost grant (local, no API call). A loss is
#: acted on when the grant's ``lost`` event fires; this check is only the fallback.
LOSS_CHECK = 1.0
#: ``record_info`` key of a pooled connection taken away from its user after a loss.
SEVERED = "konductor.severed"
#: Seconds between closing a connection given back for fairness and releasing its
#: permit: the server ends the backend a moment after the client closes it (still
#: counted in ``pg_stat_activity`` meanwhile), and the permit must not be handed on
#: before that.
RELEASE_GRACE = 0.5


@dataclass(frozen=True)
class Settings:
    """A CoordinatedEngine's validated configuration."""

    semaphore: str
    max_connections: int | None
    pool_size: int
    min_connections: int
    mode: Mode
    ttl: float
    reserve_timeout: float | None
    grow_interval: float | None
    rebalance: bool = False


def permit_of(handle: Handle) -> Permit:
    """The async Permit behind a handle (a SyncGrant of one, or the Permit itself)."""
    return handle.grant if isinstance(handle, SyncGrant) else handle


def _close(record: ConnectionPoolEntry) -> None:
    try:
        record.close()
    except Exception:
        log.warning("closing a pooled connection failed", exc_info=True)


def _terminate(record: ConnectionPoolEntry, why: str) -> None:
    """Take a connection in use away from its user: its permit is gone.

    Its user's thread may be inside the driver, blocked reading the socket, so
    the socket is never closed under it (a closed descriptor number is reused
    by the next socket the process opens, which that thread would then read).
    Instead:

    1. the statement in flight is cancelled where the driver offers a blocking
       cancel (psycopg, psycopg2: safe from another thread), so that the
       server ends it now rather than when it would finish;
    2. the socket is **shut down** (both directions): the server sees the
       client go and ends the backend, and a thread blocked reading wakes with
       an error; the descriptor stays open until the connection's own user
       closes it (SQLAlchemy invalidates that ``Connection`` on the error) or
       it is checked in (:meth:`Core.give_back` closes it);
    3. the cancel is sent again shortly after, in the background: a statement
       that reached the server just after the first cancel (which the server
       ignores while the backend is idle) would otherwise run to its end.

    A driver connection without a socket to shut down (asyncpg) is invalidated
    at once instead (its transport is aborted on its own event loop).

    The record is marked :data:`SEVERED` first, so that whatever error its
    user's statement ends with is treated as a disconnect (see
    :func:`severed_is_disconnect`): the statement in flight raises
    ``OperationalError`` (the cancel, or the shut-down socket) or ``InternalError``
    (psycopg, when the socket goes while it reads the answer); the next call on
    a connection checked out raises the dialect's disconnect error
    (``connection_invalidated`` true).
    """
    info = record.record_info  # (a pool entry's is always a dict; None is for a detached one)
    if info is not None:
        info[SEVERED] = why
    driver = record.driver_connection
    cancel = _canceller(driver)
    if cancel is not None:
        _try(cancel, "cancelling the statement of a connection that lost its permit")
    if _shut_down(driver):
        try:
            record.invalidate(LostConnection(why), soft=True)  # recycled, never reused
        except Exception:
            log.warning("invalidating a connection that lost its permit failed", exc_info=True)
        if cancel is not None:
            threading.Thread(
                target=_cancel_again, args=(cancel,), name="konductor-cancel", daemon=True
            ).start()
        return
    try:
        record.invalidate(LostConnection(why))
    except Exception:
        log.warning("closing a connection that lost its permit failed", exc_info=True)


#: Seconds after the first cancel at which a severed connection's statement is cancelled again.
CANCEL_AGAIN = (0.05, 0.25, 1.0)


def _canceller(driver: object) -> Callable[[], object] | None:
    """A blocking cancel of ``driver``'s statement in flight that works from any thread.

    psycopg's cancel handle (``pgconn.get_cancel()``) keeps working once the
    connection is gone; otherwise the driver's own ``cancel()`` if it is not
    a coroutine (psycopg2); ``None`` if neither (asyncpg).
    """
    pgconn = getattr(driver, "pgconn", None)
    get_cancel = getattr(pgconn, "get_cancel", None)
    if callable(get_cancel):
        try:
            handle = get_cancel()
        except Exception:
            return None
        cancel = getattr(handle, "cancel", None)
        return cancel if callable(cancel) else None
    cancel = getattr(driver, "cancel", None)
    if callable(cancel) and not inspect.iscoroutinefunction(cancel):
        return cast("Callable[[], object]", cancel)
    return None


def _shut_down(driver: object) -> bool:
    """Shut down ``driver``'s socket without closing it; ``False`` if it has none."""
    fileno = getattr(driver, "fileno", None)
    if not callable(fileno):
        return False
    try:
        fd = fileno()
        if not isinstance(fd, int) or fd < 0:
            return False
        with socket.socket(fileno=os.dup(fd)) as dup:  # (shutdown acts on the socket)
            dup.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # the server had already closed it
            return True
        log.debug("shutting down the socket of a connection that lost its permit failed: %s", exc)
        return False
    except Exception:
        return False
    return True


def _cancel_again(cancel: Callable[[], object]) -> None:
    started = time.monotonic()
    for at in CANCEL_AGAIN:
        time.sleep(max(0.0, started + at - time.monotonic()))
        _try(cancel, "cancelling again the statement of a connection that lost its permit")


def _try(fn: Callable[[], object], what: str) -> None:
    try:
        fn()
    except Exception as exc:
        log.debug("%s failed: %s", what, exc)


def severed_is_disconnect(context: ExceptionContext) -> None:
    """``handle_error`` hook: any error on a connection taken away after a loss is a disconnect.

    So SQLAlchemy invalidates that ``Connection`` at once (its user's
    ``close()`` then does not try a rollback on a closed socket, and the error
    says ``connection_invalidated``), and only that one: the rest of the pool
    is healthy (``invalidate_pool_on_disconnect`` off).
    """
    conn = context.connection
    if conn is None or conn.closed or conn.invalidated:
        return
    info = conn.connection.record_info
    if info is not None and SEVERED in info:
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False


class LostConnection(SemaphoreLost):
    """The permit this database connection was counted under was lost; it was closed."""


class Core:
    """Accounting shared by the sync and async reservations (one per engine and process)."""

    is_async = False

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.closed = False
        self.generation = 0
        self._inherited: list[object] = []  # a parent's pool state, kept alive (see after_fork)
        self._reset()
        _process.register(self)

    # -- per-process state ------------------------------------------------------------

    def _new_queue(self) -> sqla_queue.QueueCommon[Item]:
        raise NotImplementedError

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.generation += 1
        self._lock = threading.Lock()
        self.queue = self._new_queue()
        self._records: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()
        # Checked out (reserve mode), and taken away after a loss until they come back.
        self._out: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()
        self._dropped: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()
        self.bound: weakref.WeakKeyDictionary[ConnectionPoolEntry, Handle] = (
            weakref.WeakKeyDictionary()
        )
        self.grants: list[Handle] = []
        self._lost: list[Handle] = []  # lost grants still to be released (hygiene)
        self.held = 0  # permits held
        self.slots = 0  # idle connections + tokens + checked out
        self.debt = 0  # slots owed back after a loss or a release
        self.in_use = 0  # checked out (or being connected)
        self.lost_total = 0
        # Rebalancing: this engine's id on the semaphore (per process and reservation),
        # permits to give back (``giving``), of which ``surplus`` slots are still to be
        # reclaimed and ``_ready`` the times their permits may be released.
        self.member = uuid.uuid4().hex
        self.giving = 0
        self.surplus = 0
        self._ready: list[float] = []
        self.share: int | None = None
        self.last_look = float("-inf")
        self.started = False
        self.demand = False  # a checkout found the pool empty since the last growth try
        # Checkouts waiting for a slot now. A waiting checkout is demand for as long as it
        # waits: the threads that return connections take them straight back (the queue
        # does not hand a returned item to the longest waiter), so new waits can stop.
        self.waiters = 0
        self.last_grow = float("-inf")
        self.created_semaphore = False

    def after_fork(self) -> None:
        """In a forked child: forget the parent's grants and connections.

        The parent's connections are neither closed nor returned (closing a
        shared socket would end the parent's session); they are only kept
        referenced so that garbage collection never touches them either.
        """
        self._inherited.append((self.queue, self._records, self.bound))
        self._reset()

    def check_process(self) -> None:
        if self.pid != os.getpid():  # forked without os.register_at_fork (not on Linux)
            self.after_fork()
        if self.closed:
            raise KonductorError(
                f"this CoordinatedEngine (semaphore {self.s.semaphore!r}) is closed"
            )

    # -- slots ------------------------------------------------------------------------

    def _owe_locked(self) -> bool | None:
        """Pay one slot owed (under the lock): ``True`` for a debt (a lost or released
        permit), ``False`` for a surplus (given back for fairness), ``None`` if none."""
        if self.debt > 0:
            self.debt -= 1
            self.slots -= 1
            return True
        if self.surplus > 0:
            self.surplus -= 1
            self.slots -= 1
            return False
        return None

    def _paid_surplus(self, closed_now: bool) -> None:
        """A surplus slot is gone (its connection closed, if it had one): its permit may
        be released, after :data:`RELEASE_GRACE` if a connection was just closed."""
        at = time.monotonic() + (RELEASE_GRACE if closed_now else 0.0)
        with self._lock:
            self._ready.append(at)
        self.wake()

    def add(self, handle: Handle, generation: int) -> bool:
        """Count a new grant and put a token per new permit into the queue."""
        count = permit_of(handle).count
        with self._lock:
            if generation != self.generation or self.pid != os.getpid():
                return False
            self.grants.append(handle)
            self.held += count
            permit_of(handle).when_lost(self._lost_now)
            if self.s.mode == "per_connection":
                return True
            covered = min(self.debt, count)
            self.debt -= covered
            fresh = count - covered
            self.slots += fresh
        for _ in range(fresh):
            self.queue.put_nowait(None)
        return True

    def claim(self, item: Item) -> bool:
        """A checkout took ``item``: hand it out (True), or pay a debt with it (False)."""
        with self._lock:
            owed = self._owe_locked()
            if owed is None:
                self.in_use += 1
                if item is not None:
                    self._out.add(item)
        if owed is not None and item is not None:
            self._records.discard(item)
            _close(item)
        if owed is False:
            self._paid_surplus(item is not None)
        return owed is None

    def created(self, record: ConnectionPoolEntry) -> bool:
        """A connection was opened for a token: hand it out (True), or pay a debt (False).

        A loss may have come while it was being opened: then it is closed at once.
        """
        with self._lock:
            self._records.add(record)
            owed = self._owe_locked()
            if owed is None:
                self._out.add(record)
            else:
                self.in_use -= 1
        if owed is not None:
            self._records.discard(record)
            _close(record)
        if owed is False:
            self._paid_surplus(True)
        return owed is None

    def unclaim_token(self) -> None:
        """Opening a connection for a token failed: the token goes back."""
        with self._lock:
            self.in_use -= 1
            owed = self._owe_locked()
        if owed is False:
            self._paid_surplus(False)
        if owed is None:
            self.queue.put_nowait(None)

    def give_back(self, record: ConnectionPoolEntry) -> None:
        """A connection came back: keep it idle, or close it to pay a debt."""
        with self._lock:
            if record not in self._records:  # the parent's, from before a fork
                return
            self.in_use -= 1
            self._out.discard(record)
            if record.record_info is not None:
                record.record_info.pop(SEVERED, None)
            dropped = record in self._dropped
            if dropped:  # taken away after a loss: its slot is paid
                self._dropped.discard(record)
                self._records.discard(record)
            else:
                owed = self._owe_locked()
        if dropped:
            _close(record)  # (its socket was shut down; a no-op if already invalidated)
            return
        if owed is None:
            self.queue.put_nowait(record)
            return
        self._records.discard(record)
        _close(record)
        if owed is False:
            self._paid_surplus(True)

    def reclaim_idle(self) -> None:
        """Pay debts and surplus from the idle queue now: close idle connections, drop
        tokens (never a connection in use)."""
        while True:
            with self._lock:
                if self.debt <= 0 and self.surplus <= 0:
                    return
            try:
                item = self.queue.get_nowait()
            except sqla_queue.Empty:
                return
            with self._lock:
                owed = self._owe_locked()
            if owed is None:
                self.queue.put_nowait(item)
                return
            if item is not None:
                self._records.discard(item)
                _close(item)
            if owed is False:
                self._paid_surplus(item is not None)

    def close_idle(self) -> None:
        """``Pool.dispose()``: close idle connections; their permits stay held as tokens."""
        items: list[Item] = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except sqla_queue.Empty:
                break
        for item in items:
            if item is not None:
                self._records.discard(item)
                _close(item)
            self.queue.put_nowait(None)

    # -- loss ---------------------------------------------------------------------------

    def collect_lost(self) -> None:
        """Drop grants that were lost (a local check, no API call); log each as an error."""
        with self._lock:
            lost = [h for h in self.grants if permit_of(h).is_lost]
            if not lost:
                return
            for h in lost:
                self.grants.remove(h)
                count = permit_of(h).count
                self.held -= count
                self.lost_total += count
                if self.s.mode == "reserve":
                    self.debt += count
            self._lost.extend(lost)
            held, in_use = self.held, self.in_use
            lost_ids = {id(h) for h in lost}
            bound = [r for r, h in list(self.bound.items()) if id(h) in lost_ids]
        for h in lost:
            p = permit_of(h)
            if self.s.mode == "reserve":
                log.error(
                    "lost %d reserved connection permit(s) on semaphore %r (token %d): %s. "
                    "Idle connections are closed, then connections in use beyond what is "
                    "still held (their next call raises a disconnect error); this process "
                    "now hands out at most %d connection(s) (%d were in use).",
                    p.count,
                    p.name,
                    p.token,
                    p.lost_reason or "lost",
                    held,
                    in_use,
                )
            else:
                log.error(
                    "lost the permit (token %d) of a connection in use on semaphore %r: %s. "
                    "The connection is closed now; its next call raises a disconnect error.",
                    p.token,
                    p.name,
                    p.lost_reason or "lost",
                )
        if self.s.mode == "reserve":
            self.reclaim_idle()
            bound = self._take_in_use()
        why = f"its permit on semaphore {self.s.semaphore!r} was lost"
        for record in bound:
            _terminate(record, why)

    def _take_in_use(self) -> list[ConnectionPoolEntry]:
        """After idle slots paid what they could: the connections in use that must go."""
        with self._lock:
            taken = []
            while self.debt > 0 and self._out:
                record = self._out.pop()
                self._dropped.add(record)
                self.debt -= 1
                self.slots -= 1
                taken.append(record)
        return taken

    def _lost_now(self, reason: str) -> None:
        """A grant's ``lost`` event fired (on the client's loop): act on it now."""
        raise NotImplementedError

    def take_lost(self) -> list[Handle]:
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    def detach_all(self) -> tuple[list[Handle], int]:
        """Stop; owe back every slot; close what is idle. Returns the grants to release."""
        with self._lock:
            self.generation += 1
            self.started = False
            if self.s.mode == "reserve":
                handles = self.grants + self._lost
                self.grants, self._lost = [], []
                self.held = 0
                self.debt = self.slots
                self.giving = self.surplus = 0
                self._ready = []
            else:  # per-connection permits go back when their connection does
                handles, self._lost = self._lost, []
            in_use = self.in_use
        self.reclaim_idle()
        return handles, in_use

    # -- growth -----------------------------------------------------------------------

    def note_demand(self) -> None:
        """A checkout found no idle slot: ask the background task to try growing."""
        if not self.demand:
            self.demand = True
            self.wake()

    def wake(self) -> None:
        raise NotImplementedError

    def waiting(self, change: int) -> None:
        """A checkout starts (+1) or stops (-1) waiting for a slot."""
        with self._lock:
            self.waiters += change

    def grow_due(self) -> bool:
        s = self.s
        if s.mode != "reserve" or s.grow_interval is None or s.rebalance:
            return False  # (with rebalancing, growth is part of the rebalance)
        with self._lock:
            if not (self.demand or self.waiters) or self.held >= s.pool_size:
                return False
            now = time.monotonic()
            if now - self.last_grow < s.grow_interval:
                return False
            self.demand = False
            self.last_grow = now
            return True

    def wants_more(self, generation: int, up_to: int | None = None) -> bool:
        limit = self.s.pool_size if up_to is None else min(up_to, self.s.pool_size)
        with self._lock:
            return generation == self.generation and self.giving == 0 and self.held < limit

    def next_wait(self) -> float:
        now = time.monotonic()
        wait = LOSS_CHECK
        if self.s.grow_interval is not None:
            if self.s.rebalance and self.started:
                wait = min(wait, self.last_look + self.s.grow_interval - now)
            elif self.demand or self.waiters:
                wait = min(wait, self.last_grow + self.s.grow_interval - now)
        with self._lock:
            if self._ready:
                wait = min(wait, min(self._ready) - now)
        return max(0.05, wait)

    # -- rebalancing --------------------------------------------------------------------

    def note(self) -> dict[str, object]:
        """What this engine records on its semaphore entries (see :mod:`._shares`)."""
        return {"member": self.member, "demand": self.s.pool_size}

    def holding(self) -> tuple[int, int]:
        """(permits held, of which being given back for fairness)."""
        with self._lock:
            return self.held, self.giving

    def look_due(self) -> bool:
        """Time for the one read of the semaphore per ``grow_interval``."""
        s = self.s
        if s.mode != "reserve" or not s.rebalance or s.grow_interval is None:
            return False
        now = time.monotonic()
        with self._lock:
            if not self.started or now - self.last_look < s.grow_interval:
                return False
            self.last_look = now
            return True

    def take_demand(self) -> bool:
        """Whether a checkout found the pool exhausted since the last growth, or waits
        now (and reset the former)."""
        with self._lock:
            demand, self.demand = self.demand or self.waiters > 0, False
            return demand

    def give_fair(self, count: int, why: str) -> None:
        """Start giving ``count`` permits back for fairness: idle slots now, connections
        in use as they come back (never taken away). The driver then calls
        :meth:`reclaim_idle` (in SQLAlchemy's greenlet for an async engine: it closes
        connections); the permits are released by :meth:`take_given` once their
        slots are gone."""
        with self._lock:
            count = min(count, self.held - self.giving - self.s.min_connections)
            if count <= 0:
                return
            self.giving += count
            self.surplus += count
            held = self.held
        log.info(
            "giving back %d of %d connection permit(s) on semaphore %r for fairness (%s); "
            "idle connections first, connections in use when they come back",
            count,
            held,
            self.s.semaphore,
            why,
        )

    def keep(self) -> None:
        """Fairness no longer asks for the surplus not reclaimed yet: keep those slots."""
        with self._lock:
            self.giving -= self.surplus
            self.surplus = 0

    def take_given(self) -> list[Handle]:
        """The single-permit grants whose slots are gone (and connections closed for
        :data:`RELEASE_GRACE`): uncounted here, to be released by the caller."""
        now = time.monotonic()
        with self._lock:
            ready = sorted(self._ready)
            due = [t for t in ready if t <= now]
            # The first grant (min_connections) is never given back; the rest are singles.
            singles = [h for h in self.grants[1:] if permit_of(h).count == 1]
            taken = singles[len(singles) - min(len(due), len(singles)) :]
            for h in taken:
                self.grants.remove(h)
                self.held -= 1
                self.giving -= 1
            # Due, but no single grant left to release (one was lost meanwhile): the
            # permit stays, so its slot comes back as a token rather than stay unused.
            restored = len(due) - len(taken)
            self.giving -= restored
            self.slots += restored
            self._ready = ready[len(due) :]
            held = self.held
        for _ in range(restored):
            self.queue.put_nowait(None)
        if taken:
            log.info(
                "gave back %d connection permit(s) on semaphore %r for fairness; holds %d",
                len(taken),
                self.s.semaphore,
                held,
            )
        return taken

    def permits_arg(self) -> int | None:
        """``max_connections`` on the first call (to create the semaphore), then ``None``.

        Passing it again would log the core's "cluster wins" warning on every
        growth try when somebody changed the cluster's permit count.
        """
        return None if self.created_semaphore else self.s.max_connections

    def top_up_counts(self) -> range:
        """After waiting for the minimum: the counts to try for the rest, largest first."""
        with self._lock:
            return range(self.s.pool_size - self.held, 0, -1)

    def reserved(self, started: float) -> None:
        log.info(
            "reserved %d of %d wanted connection permit(s) on semaphore %r in %.1fs",
            self.held,
            self.s.pool_size,
            self.s.semaphore,
            time.monotonic() - started,
        )

    def status(self) -> str:
        with self._lock:
            fair = ""
            if self.s.rebalance:
                share = "?" if self.share is None else str(self.share)
                fair = f" share={share} giving={self.giving}"
            return (
                f"semaphore={self.s.semaphore!r} mode={self.s.mode} held={self.held} "
                f"slots={self.slots} in_use={self.in_use} owed={self.debt} "
                f"lost={self.lost_total} wanted={self.s.pool_size}{fair}"
            )

    def shutdown(self) -> None:
        """At process exit."""

    def warn_in_use_at_release(self, in_use: int) -> None:
        if in_use and self.s.mode == "reserve":
            log.warning(
                "released the reservation on semaphore %r with %d connection(s) still "
                "checked out: they are closed when returned, and not counted until then",
                self.s.semaphore,
                in_use,
            )

    def forget(self, handle: Handle) -> None:
        """Per-connection mode: ``handle``'s connection is gone; it is released next."""
        with self._lock:
            if handle in self.grants:
                self.grants.remove(handle)
                self.held -= 1

    # -- what the pools call; the sync and async reservations differ -------------------

    def before_checkout(self) -> None:
        """Check the process and reserve on first use (blocks or awaits as needed)."""
        raise NotImplementedError

    def acquire_one(self) -> Handle:
        """Per-connection mode: one permit, waiting up to ``reserve_timeout``."""
        raise NotImplementedError

    def release_one(self, handle: Handle) -> None:
        raise NotImplementedError

    def bind(self, record: ConnectionPoolEntry, handle: Handle) -> None:
        """Per-connection mode: ``record`` was opened under ``handle``."""
        with self._lock:
            self.bound[record] = handle
            self.in_use += 1

    def unbind(self, record: ConnectionPoolEntry) -> Handle | None:
        with self._lock:
            handle = self.bound.pop(record, None)
            if handle is not None:
                self.in_use -= 1
            return handle
