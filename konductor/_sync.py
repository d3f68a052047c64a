"""The blocking facade: the async client on one background event-loop thread.

Celery prefork workers, sync SQLAlchemy and scripts cannot ``await``. Instead
of a second implementation, :class:`SyncClient` runs the one async client on a
daemon thread with its own event loop (one per SyncClient and process) and
blocks the caller on each call. Renewals therefore keep running while the
caller's synchronous code runs for many TTLs.

Fork safety: after ``fork()`` the child has no loop thread and must not touch
the parent's connections or release the parent's grants. A SyncClient notices
the new pid on its next call and builds a fresh loop thread and client (from
the store factory, or from the environment) in the child; the parent's grants
stay the parent's.

A lost grant cannot interrupt synchronous code: ``ensure_held()`` raises, and
the ``with`` exit raises the primitive's :class:`LostError` subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

from konductor._admin import SyncAdmin
from konductor._backoff import Backoff
from konductor._client import Client
from konductor._errors import (
    ClientClosed,
    ConfigurationError,
    InvalidArgument,
    KonductorError,
    LeaseLost,
    StoreUnavailable,
)
from konductor._primitives._barrier import BarrierInfo
from konductor._primitives._gate import Conditions, GateInfo
from konductor._primitives._grant import Grant, Guarded
from konductor._primitives._lease import Lease
from konductor._primitives._mutex import Lock
from konductor._primitives._once import OnceStatus
from konductor._primitives._runtime import DEFAULT_TTL
from konductor._primitives._semaphore import Permit
from konductor._primitives._waitgroup import WaitGroupInfo
from konductor._store._base import Store

T = TypeVar("T")
log = logging.getLogger("konductor")
G = TypeVar("G", bound=Grant)
StoreSource = Store | Callable[[], Store] | None


class _Portal:
    """An event loop running on a daemon thread, and a way to call into it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="konductor-loop", daemon=True
        )
        self.thread.start()

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            raise KonductorError(
                "a SyncClient method was called from its own event-loop thread (from async "
                "code running on it); use the async konductor.Client there"
            )

        async def run() -> T:
            return await fn()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            # KeyboardInterrupt, SystemExit or the caller's own timeout: cancel the
            # coroutine so that an acquire in flight cleans up after itself.
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


_clients: weakref.WeakSet[SyncClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_parent()


def _close_at_exit() -> None:
    """Release what this process's SyncClients still hold when the interpreter exits.

    Registered with ``threading._register_atexit`` after concurrent.futures'
    own hook, so it runs before the interpreter stops its thread pools (those
    hooks run in reverse order): a plain ``atexit`` hook runs after, too
    late for the network calls a release needs (the Kubernetes client resolves
    proxy settings on a worker thread). Bounded: what is not released within a
    few seconds simply expires after its TTL.
    """
    for client in list(_clients):
        if client._portal is not None and client._portal_pid == os.getpid():
            # Exit must go on whatever happens: unreleased grants expire after their TTL.
            with contextlib.suppress(Exception):
                client.close(timeout=5)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
if hasattr(threading, "_register_atexit"):
    # These hooks run in reverse order of registration, and thread pools are
    # stopped by concurrent.futures' own hook: import it first so that ours is
    # registered after it and runs before it.
    import concurrent.futures.thread  # noqa: F401

    threading._register_atexit(_close_at_exit)


class SyncGrant(Generic[G]):
    """A grant held through a :class:`SyncClient` (a permit, a lock, ...)."""

    def __init__(self, grant: G, sync: SyncClient) -> None:
        self.grant = grant  # the async grant: permit.count, lock.mode, ...
        self._sync = sync

    @property
    def name(self) -> str:
        return self.grant.name

    @property
    def token(self) -> int:
        """The fencing token: strictly increases per object with every grant."""
        return self.grant.token

    @property
    def is_lost(self) -> bool:
        return self.grant.is_lost

    def ensure_held(self) -> None:
        """Raise the primitive's :class:`LostError` if the grant was lost or released."""
        self.grant.ensure_held()

    def release(self) -> None:
        """Give the grant back. Idempotent.

        Shielded: if the caller is interrupted (Ctrl-C, a soft time limit), the
        release still completes on the client's loop instead of being cut off
        mid-write.
        """
        self._sync._call(lambda: asyncio.shield(self.grant.release()))

    def __repr__(self) -> str:
        return f"<Sync{self.grant!r}>"


class SyncGuard(Generic[G]):
    """``with``: obtain, release on exit; the exit raises if the grant was lost.

    Raises (on exit):
        LostError subclass: the grant was lost while the block ran.
    """

    def __init__(self, sync: SyncClient, build: Callable[[Client], Guarded[G]]) -> None:
        self._sync = sync
        self._build = build
        self._held: SyncGrant[G] | None = None

    def __enter__(self) -> SyncGrant[G]:
        sync = self._sync

        async def obtain() -> G:
            return await self._build(sync._async()).obtain()

        self._held = SyncGrant(sync._call(obtain), sync)
        return self._held

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._held
        assert held is not None
        try:
            held.release()
        finally:
            if held.is_lost:
                raise held.grant.lost_error(
                    f"{held.grant._describe()} was lost while held: {held.grant.lost_reason}"
                ) from exc


class SyncClient:
    """The blocking twin of :class:`konductor.Client`, with the same methods.

    ``store`` is a store, a zero-argument factory of stores (needed to keep
    using the client in a forked child), or ``None`` to resolve it from the
    environment like :class:`Client`. Use as ``with SyncClient() as client``.

    Raises:
        ConfigurationError: as :class:`Client`; also when a forked child uses a
            client built from a store instance rather than a factory.
    """

    def __init__(
        self,
        store: StoreSource = None,
        *,
        namespace: str | None = None,
        identity: str | None = None,
    ) -> None:
        self._source = store
        self._namespace = namespace
        self._identity = identity
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._portal: _Portal | None = None
        self._portal_pid = 0  # the process that started the loop thread
        self._client: Client | None = None
        self._closed = False
        _clients.add(self)

    # -- plumbing ---------------------------------------------------------------------

    def _forget_parent(self) -> None:
        # In a forked child: the parent's thread does not exist here, and its
        # connections and grants are not ours. Drop them without closing.
        self._lock = threading.Lock()
        self._portal = None
        self._client = None

    def _store(self) -> Store | None:
        source = self._source
        if source is None or isinstance(source, Store):
            if isinstance(source, Store) and os.getpid() != self._pid:
                raise ConfigurationError(
                    "this SyncClient was built from a store instance in another process; after "
                    "fork() pass a factory instead: SyncClient(store=lambda: KubernetesStore(...))"
                )
            return source
        return source()

    def _async(self) -> Client:
        """The async client (call only on the portal's thread)."""
        assert self._client is not None
        return self._client

    def _ensure(self) -> _Portal:
        with self._lock:
            if self._closed:
                raise ClientClosed(
                    "this SyncClient is closed; call its methods inside its `with` block, "
                    "or create a new one"
                )
            if self._portal is None:
                portal = _Portal()

                async def build() -> Client:
                    return Client(self._store(), namespace=self._namespace, identity=self._identity)

                try:
                    self._client = portal.call(build)
                except BaseException:
                    portal.stop()  # no thread or loop left behind by a failed start
                    raise
                self._portal = portal
                self._portal_pid = os.getpid()
            return self._portal

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return self._ensure().call(fn)

    @property
    def identity(self) -> str:
        """This process's holder identity."""
        self._ensure()
        return self._async().identity

    @property
    def namespace(self) -> str:
        self._ensure()
        return self._async().namespace

    @property
    def admin(self) -> SyncAdmin:
        """The blocking twin of :attr:`Client.admin` (see :class:`konductor.SyncAdmin`)."""
        return SyncAdmin(self._call, lambda: self._async().admin)

    # -- semaphore --------------------------------------------------------------------

    def semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> SyncGuard[Permit]:
        """``with client.semaphore("payments-api", permits=3) as permit:`` (see Client)."""
        return SyncGuard(
            self, lambda c: c.semaphore(name, permits, count=count, ttl=ttl, timeout=timeout)
        )

    def acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> SyncGrant[Permit]:
        """Acquire and return the permit; call ``permit.release()`` (see Client)."""
        return SyncGrant(
            self._call(
                lambda: self._async().acquire_semaphore(
                    name, permits, count=count, ttl=ttl, timeout=timeout
                )
            ),
            self,
        )

    def try_acquire_semaphore(
        self, name: str, permits: int | None = None, *, count: int = 1, ttl: object = DEFAULT_TTL
    ) -> SyncGrant[Permit] | None:
        """A permit if one is free and nobody is queued ahead, else ``None``."""
        permit = self._call(
            lambda: self._async().try_acquire_semaphore(name, permits, count=count, ttl=ttl)
        )
        return None if permit is None else SyncGrant(permit, self)

    # -- mutex and rwmutex ------------------------------------------------------------

    def mutex(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGuard[Lock]:
        """``with client.mutex("reindex") as lock:`` (see Client)."""
        return SyncGuard(self, lambda c: c.mutex(name, ttl=ttl, timeout=timeout))

    def read_lock(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGuard[Lock]:
        """``with client.read_lock("config"):`` (see Client)."""
        return SyncGuard(self, lambda c: c.read_lock(name, ttl=ttl, timeout=timeout))

    def write_lock(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGuard[Lock]:
        """``with client.write_lock("config"):`` (see Client)."""
        return SyncGuard(self, lambda c: c.write_lock(name, ttl=ttl, timeout=timeout))

    def acquire_mutex(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGrant[Lock]:
        return SyncGrant(
            self._call(lambda: self._async().acquire_mutex(name, ttl=ttl, timeout=timeout)), self
        )

    def try_acquire_mutex(self, name: str, *, ttl: object = DEFAULT_TTL) -> SyncGrant[Lock] | None:
        lock = self._call(lambda: self._async().try_acquire_mutex(name, ttl=ttl))
        return None if lock is None else SyncGrant(lock, self)

    def acquire_read_lock(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGrant[Lock]:
        return SyncGrant(
            self._call(lambda: self._async().acquire_read_lock(name, ttl=ttl, timeout=timeout)),
            self,
        )

    def acquire_write_lock(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGrant[Lock]:
        return SyncGrant(
            self._call(lambda: self._async().acquire_write_lock(name, ttl=ttl, timeout=timeout)),
            self,
        )

    # -- lease ------------------------------------------------------------------------

    def lease(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGuard[Lease]:
        """``with client.lease("scheduler") as lease:`` hold leadership (see Client).

        Synchronous code cannot be interrupted: check ``lease.ensure_held()``
        between steps; the ``with`` exit raises ``LeaseLost`` after a loss.
        """
        return SyncGuard(self, lambda c: c.lease(name, ttl=ttl, timeout=timeout))

    def acquire_lease(
        self, name: str, *, ttl: object = DEFAULT_TTL, timeout: object = None
    ) -> SyncGrant[Lease]:
        return SyncGrant(
            self._call(lambda: self._async().acquire_lease(name, ttl=ttl, timeout=timeout)), self
        )

    def try_acquire_lease(self, name: str, *, ttl: object = DEFAULT_TTL) -> SyncGrant[Lease] | None:
        lease = self._call(lambda: self._async().try_acquire_lease(name, ttl=ttl))
        return None if lease is None else SyncGrant(lease, self)

    def campaign(
        self,
        name: str,
        leader_fn: Callable[[SyncGrant[Lease]], T],
        *,
        ttl: object = DEFAULT_TTL,
    ) -> T:
        """Keep trying to lead; run the blocking ``leader_fn(lease)`` while this process leads.

        The twin of ``Client.campaign`` for blocking code (a single Celery beat,
        a cron-like loop), which cannot be cancelled from outside: ``leader_fn``
        runs on the calling thread and must call ``lease.ensure_held()``
        between steps. When leadership is lost, that call raises
        :class:`LeaseLost`; the campaign catches it, waits to lead again and
        calls ``leader_fn`` anew. When ``leader_fn`` returns or raises anything
        else, the lease is released and its result returned (or its exception
        raised). Store outages while campaigning are retried with backoff.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            whatever ``leader_fn`` raises, except the ``LeaseLost`` of its lease.
        """
        if not callable(leader_fn):
            raise InvalidArgument(f"leader_fn must be a function, got {leader_fn!r}")
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            try:
                lease = self.acquire_lease(name, ttl=ttl)
            except StoreUnavailable as exc:
                log.warning("campaign for lease %r: %s; retrying", name, exc)
                time.sleep(backoff.next_delay())
                continue
            backoff.reset()
            try:
                return leader_fn(lease)
            except LeaseLost:
                if not lease.is_lost:
                    raise  # another lease's loss: not ours to handle
                log.warning(
                    "lost leadership of lease %r (token %d): %s; campaigning again",
                    name,
                    lease.token,
                    lease.grant.lost_reason,
                )
            finally:
                lease.release()

    # -- once -------------------------------------------------------------------------

    def once(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> T | None:
        """Run the blocking ``fn`` once cluster-wide (see ``Client.once``).

        ``fn`` runs on a worker thread of the client's loop (with a copy of the
        caller's context variables) while the loop renews the claim; the
        caller blocks until the outcome. Returns ``fn``'s result to the runner,
        ``None`` to callers that waited for another runner.
        """

        async def run() -> T:
            return await asyncio.to_thread(fn)

        return self._call(lambda: self._async().once(name, run, ttl=ttl, timeout=timeout))

    def once_status(self, name: str) -> OnceStatus:
        return self._call(lambda: self._async().once_status(name))

    def reset_once(self, name: str, *, force: bool = False) -> OnceStatus:
        return self._call(lambda: self._async().reset_once(name, force=force))

    # -- barrier ----------------------------------------------------------------------

    def arrive_barrier(
        self, name: str, expected: int | None = None, *, party: str | None = None
    ) -> BarrierInfo:
        return self._call(lambda: self._async().arrive_barrier(name, expected, party=party))

    def wait_barrier(self, name: str, *, timeout: object = None) -> BarrierInfo:
        return self._call(lambda: self._async().wait_barrier(name, timeout=timeout))

    def arrive_and_wait(
        self,
        name: str,
        expected: int | None = None,
        *,
        party: str | None = None,
        timeout: object = None,
    ) -> BarrierInfo:
        return self._call(
            lambda: self._async().arrive_and_wait(name, expected, party=party, timeout=timeout)
        )

    def barrier_status(self, name: str) -> BarrierInfo:
        return self._call(lambda: self._async().barrier_status(name))

    # -- gate -------------------------------------------------------------------------

    def create_gate(self, name: str, *, conditions: Conditions | None = None) -> GateInfo:
        return self._call(lambda: self._async().create_gate(name, conditions=conditions))

    def open_gate(self, name: str) -> None:
        self._call(lambda: self._async().open_gate(name))

    def close_gate(self, name: str) -> None:
        self._call(lambda: self._async().close_gate(name))

    def wait_gate(
        self, name: str, *, conditions: Conditions | None = None, timeout: object = None
    ) -> GateInfo:
        return self._call(
            lambda: self._async().wait_gate(name, conditions=conditions, timeout=timeout)
        )

    def gate_status(self, name: str) -> GateInfo:
        return self._call(lambda: self._async().gate_status(name))

    # -- wait group -------------------------------------------------------------------

    def waitgroup_add(self, name: str, delta: int = 1) -> int:
        return self._call(lambda: self._async().waitgroup_add(name, delta))

    def waitgroup_done(self, name: str) -> int:
        return self._call(lambda: self._async().waitgroup_done(name))

    def waitgroup_wait(self, name: str, *, timeout: object = None) -> WaitGroupInfo:
        return self._call(lambda: self._async().waitgroup_wait(name, timeout=timeout))

    def waitgroup_status(self, name: str) -> WaitGroupInfo:
        return self._call(lambda: self._async().waitgroup_status(name))

    # -- any primitive ----------------------------------------------------------------

    def delete(self, kind: str, name: str) -> None:
        """Delete the object of primitive ``kind`` named ``name`` (see ``Client.delete``)."""
        self._call(lambda: self._async().delete(kind, name))

    # -- lifecycle --------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Release what is still held, stop the loop thread. Idempotent.

        ``timeout`` bounds the wait for the releases (``None``: as long as the
        store's own retries take); what is not released by then expires after
        its TTL.
        """
        with self._lock:
            portal, client = self._portal, self._client
            self._closed = True
            self._portal = self._client = None
        if portal is not None and client is not None:
            try:
                portal.call(client.close, timeout)
            finally:
                portal.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten client must not keep a thread alive
        portal = getattr(self, "_portal", None)
        if portal is not None and getattr(self, "_pid", None) == os.getpid():
            portal.loop.call_soon_threadsafe(portal.loop.stop)
