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
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from konductor import _lifecycle as lifecycle
from konductor._admin import SyncAdmin
from konductor._backoff import Backoff
from konductor._client import Client
from konductor._engine._grant import Grant, Guarded
from konductor._engine._runtime import DEFAULT_TTL
from konductor._engine._validate import Duration
from konductor._errors import (
    ClientClosed,
    ConfigurationError,
    InvalidArgument,
    KonductorError,
    LeaseLost,
    StoreUnavailable,
)
from konductor._primitives._lease import Lease
from konductor._primitives._ratelimit import RateLimiter, RateLimitGuard
from konductor._store._base import Store
from konductor._typing import ExcInfo

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
log = logging.getLogger("konductor")
G = TypeVar("G", bound=Grant)
StoreSource = Store | Callable[[], Store] | None
#: Seconds an interrupted call waits for its acquire's clean-up (ticket and any
#: grant removed) before the interruption propagates.
CLEANUP_WAIT = 5.0


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

        finished = threading.Event()

        async def run() -> T:
            try:
                return await fn()
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            # KeyboardInterrupt, SystemExit, the caller's own timeout, or an
            # exception raised into this thread (Celery's soft time limit): cancel
            # the coroutine, and wait (bounded) for an acquire in flight to clean up
            # after itself, so that nothing is held or queued once this raises.
            if future.cancel():
                finished.wait(CLEANUP_WAIT)
            elif future.done() and not future.cancelled() and future.exception() is None:
                self._give_back(future.result())
            raise

    def _give_back(self, result: object) -> None:
        """Release a grant that arrived just as its caller was interrupted (nobody holds it)."""
        if isinstance(result, Grant):
            release = asyncio.run_coroutine_threadsafe(result.release(), self.loop)
            with contextlib.suppress(Exception):
                release.result(CLEANUP_WAIT)

    def stop(self) -> None:
        """Stop the loop thread and close the loop, as ``asyncio.run`` ends.

        Tasks still on the loop (an Event being sent, a watch) are cancelled and
        given :data:`CLEANUP_WAIT` to finish first: a loop closed under a
        pending task leaves it pending forever, holding whatever it refers to.
        """
        if self.loop.is_running() and threading.current_thread() is not self.thread:
            finishing = asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop)
            with contextlib.suppress(Exception):
                finishing.result(CLEANUP_WAIT + 1)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait (bounded) for them to end."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest, timeout=CLEANUP_WAIT)


_clients: weakref.WeakSet[SyncClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_parent()


def _close_at_exit() -> None:
    """Release what this process's SyncClients still hold when the interpreter exits.

    Bounded: what is not released within a few seconds simply expires after
    its TTL. (When it runs, and why then: :mod:`konductor._lifecycle`.)
    """
    for client in list(_clients):
        if client._portal is not None and client._portal_pid == os.getpid():
            # Exit must go on whatever happens: unreleased grants expire after their TTL.
            with contextlib.suppress(Exception):
                client.close(timeout=5)


lifecycle.on_fork_in_child(_after_fork_in_child)
lifecycle.on_exit(_close_at_exit)


# -- the bridge: each SyncClient method is derived from its async twin -----------------
#
# One typed wrapper per shape of result (a plain value, a grant, a grant or None, a
# guard), in the spirit of anyio's BlockingPortal: the async method keeps its own
# signature (ParamSpec), so a twin cannot drift from it; nothing is re-declared.


def _twin(call: Callable[..., Any], method: Callable[..., Any], returns: str) -> None:
    """Name ``call`` after ``method``, with its signature and docstring (for help())."""
    call.__name__ = method.__name__
    call.__qualname__ = f"SyncClient.{method.__name__}"
    call.__module__ = __name__
    call.__doc__ = (
        f"The blocking twin of :meth:`Client.{method.__name__}` (same arguments; "
        f"returns {returns}).\n\n" + inspect.cleandoc(method.__doc__ or "")
    )
    call.__wrapped__ = method  # type: ignore[attr-defined]
    call.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
        return_annotation=returns
    )


def _fits(method: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    """A check that a call's arguments fit ``method``: a wrong call raises TypeError in
    the caller's thread, before the client starts, as a hand-written method would."""
    signature = inspect.signature(method)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        signature.bind(None, *args, **kwargs)

    return bind


def _blocking(
    method: Callable[Concatenate[Any, P], Awaitable[R]],
) -> Callable[Concatenate[SyncClient, P], R]:
    """``Client.x(...)`` awaited on the loop thread; the caller blocks for its result."""

    fits = _fits(method)

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        fits(args, kwargs)
        return self._call(lambda: method(self._async(), *args, **kwargs))

    _twin(call, method, inspect.signature(method).return_annotation)
    return call


def _granting(
    method: Callable[Concatenate[Any, P], Awaitable[G]],
) -> Callable[Concatenate[SyncClient, P], SyncGrant[G]]:
    """An acquisition: the grant it returns, wrapped for blocking code."""

    fits = _fits(method)

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> SyncGrant[G]:
        fits(args, kwargs)
        return SyncGrant(self._call(lambda: method(self._async(), *args, **kwargs)), self)

    _twin(call, method, f"SyncGrant[{inspect.signature(method).return_annotation}]")
    return call


def _trying(
    method: Callable[Concatenate[Any, P], Awaitable[G | None]],
) -> Callable[Concatenate[SyncClient, P], SyncGrant[G] | None]:
    """A ``try_acquire_*``: the grant wrapped for blocking code, or ``None``."""

    fits = _fits(method)

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> SyncGrant[G] | None:
        fits(args, kwargs)
        grant = self._call(lambda: method(self._async(), *args, **kwargs))
        return None if grant is None else SyncGrant(grant, self)

    returned = str(inspect.signature(method).return_annotation).removesuffix(" | None")
    _twin(call, method, f"SyncGrant[{returned}] | None")
    return call


def _guarding(
    method: Callable[Concatenate[Any, P], Guarded[G]],
) -> Callable[Concatenate[SyncClient, P], SyncGuard[G]]:
    """A guard for ``with``: the async guard is built (and its arguments checked) on
    the loop thread when the block is entered, as ``async with`` does on entry."""

    fits = _fits(method)

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> SyncGuard[G]:
        fits(args, kwargs)
        return SyncGuard(self, lambda client: method(client, *args, **kwargs))

    returned = str(inspect.signature(method).return_annotation)
    _twin(call, method, returned.replace("Guarded[", "SyncGuard[", 1))
    return call


def _limiting(
    method: Callable[Concatenate[Any, P], RateLimitGuard],
) -> Callable[Concatenate[SyncClient, P], SyncRateLimitGuard]:
    """A rate-limit membership for ``with``: joined on the loop thread on entry."""

    fits = _fits(method)

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> SyncRateLimitGuard:
        fits(args, kwargs)
        return SyncRateLimitGuard(self, lambda client: method(client, *args, **kwargs))

    _twin(call, method, "SyncRateLimitGuard")
    return call


class SyncRateLimiter:
    """A rate-limit membership used from blocking code (see :class:`RateLimiter`).

    Every method runs on the client's loop thread, where the bucket lives:
    spending costs a thread hop, never an API call.
    """

    def __init__(self, limiter: RateLimiter, sync: SyncClient) -> None:
        self.limiter = limiter  # the async membership
        self._sync = sync

    @property
    def name(self) -> str:
        return self.limiter.name

    @property
    def rate(self) -> float:
        return self.limiter.rate

    @property
    def burst(self) -> float:
        return self.limiter.burst

    @property
    def share(self) -> float:
        async def read() -> float:
            return self.limiter.share

        return self._sync._call(read)

    def acquire(self, cost: float = 1, *, timeout: Duration | None = None) -> None:
        """Block until ``cost`` tokens are spent (see :meth:`RateLimiter.acquire`).

        Raises:
            as :meth:`RateLimiter.acquire`.
        """
        self._sync._call(lambda: self.limiter.acquire(cost, timeout=timeout))

    def try_acquire(self, cost: float = 1) -> bool:
        """Spend ``cost`` tokens if they are there now (see :meth:`RateLimiter.try_acquire`).

        Raises:
            as :meth:`RateLimiter.try_acquire`.
        """

        async def take() -> bool:
            return self.limiter.try_acquire(cost)

        return self._sync._call(take)

    def __repr__(self) -> str:
        return f"<Sync{self.limiter!r}>"


class SyncRateLimitGuard:
    """``with``: join the rate limit on the client's loop, leave on exit."""

    def __init__(self, sync: SyncClient, build: Callable[[Client], RateLimitGuard]) -> None:
        self._sync = sync
        self._build = build
        self._guard: RateLimitGuard | None = None

    def __enter__(self) -> SyncRateLimiter:
        sync = self._sync

        async def enter() -> RateLimiter:
            guard = self._build(sync._async())
            limiter = await guard.__aenter__()
            self._guard = guard
            return limiter

        return SyncRateLimiter(sync._call(enter), sync)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            self._sync._call(lambda: guard.__aexit__(exc_type, exc, tb))


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

    It drives the async :class:`Guarded` of the same call: the guard's own
    acquisition runs on the client's loop, and its exit rule decides what a
    lost grant raises. Synchronous code cannot be cancelled, so the block runs
    to its end and the exit raises.

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
            Guarded.raise_if_lost(held.grant, exc)


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

    # -- the async client's methods, derived (see _blocking, _granting, _trying, _guarding)

    semaphore = _guarding(Client.semaphore)
    acquire_semaphore = _granting(Client.acquire_semaphore)
    try_acquire_semaphore = _trying(Client.try_acquire_semaphore)

    mutex = _guarding(Client.mutex)
    read_lock = _guarding(Client.read_lock)
    write_lock = _guarding(Client.write_lock)
    acquire_mutex = _granting(Client.acquire_mutex)
    try_acquire_mutex = _trying(Client.try_acquire_mutex)
    acquire_read_lock = _granting(Client.acquire_read_lock)
    acquire_write_lock = _granting(Client.acquire_write_lock)

    lease = _guarding(Client.lease)
    acquire_lease = _granting(Client.acquire_lease)
    try_acquire_lease = _trying(Client.try_acquire_lease)

    once_status = _blocking(Client.once_status)
    reset_once = _blocking(Client.reset_once)

    arrive_barrier = _blocking(Client.arrive_barrier)
    wait_barrier = _blocking(Client.wait_barrier)
    arrive_and_wait = _blocking(Client.arrive_and_wait)
    barrier_status = _blocking(Client.barrier_status)

    create_gate = _blocking(Client.create_gate)
    open_gate = _blocking(Client.open_gate)
    close_gate = _blocking(Client.close_gate)
    wait_gate = _blocking(Client.wait_gate)
    gate_status = _blocking(Client.gate_status)

    waitgroup_add = _blocking(Client.waitgroup_add)
    waitgroup_done = _blocking(Client.waitgroup_done)
    waitgroup_wait = _blocking(Client.waitgroup_wait)
    waitgroup_status = _blocking(Client.waitgroup_status)

    rate_limit = _limiting(Client.rate_limit)
    acquire_rate_limit = _blocking(Client.acquire_rate_limit)

    delete = _blocking(Client.delete)

    # -- the two methods that take a callback: blocking code runs differently ------------

    def campaign(
        self,
        name: str,
        leader_fn: Callable[[SyncGrant[Lease]], T],
        *,
        ttl: Duration = DEFAULT_TTL,
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
            raise InvalidArgument(
                f"leader_fn must be a function, got {leader_fn!r}", argument="leader_fn"
            )
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
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
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

    def __exit__(self, *exc: *ExcInfo) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten client must not keep a thread alive
        portal = getattr(self, "_portal", None)
        if portal is not None and getattr(self, "_pid", None) == os.getpid():
            portal.loop.call_soon_threadsafe(portal.loop.stop)
