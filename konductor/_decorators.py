"""Decorators that hold a cluster-wide grant while a function runs.

One entry point per primitive works unchanged on sync and async functions,
instance methods, classmethods and staticmethods (wrapt keeps the signature,
``__wrapped__`` and ``inspect.iscoroutinefunction``). Async callables use the
async client of the running loop; sync callables the process's SyncClient,
whose background loop keeps renewing while the function runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import wrapt

from konductor._client import Client
from konductor._defaults import default_client, default_sync_client
from konductor._engine import _validate as check
from konductor._engine._grant import Guarded
from konductor._engine._runtime import DEFAULT_TTL
from konductor._engine._validate import Duration
from konductor._errors import InvalidArgument
from konductor._names import validate_name
from konductor._primitives._ratelimit import Rate, RateLimitRequest, parse_cost
from konductor._primitives._semaphore import SemaphoreRequest
from konductor._sync import SyncClient, SyncGuard

P = ParamSpec("P")
R = TypeVar("R")
Decorator = Callable[[Callable[P, R]], Callable[P, R]]


def guard_decorator(
    async_guard: Callable[[Client], Guarded[Any]],
    sync_guard: Callable[[SyncClient], SyncGuard[Any]],
    client: Client | SyncClient | None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator that runs the function inside a guard from the right client."""

    async def async_around(c: Client, thunk: Callable[[], Awaitable[Any]]) -> Any:
        async with async_guard(c):
            return await thunk()

    def sync_around(c: SyncClient, thunk: Callable[[], Any]) -> Any:
        with sync_guard(c):
            return thunk()

    return _around(async_around, sync_around, client)


# Bad arguments fail at decoration time, not at the first call: each decorator
# parses them once and hands the parsed values to the client's method.


def with_semaphore(
    name: str,
    permits: int | None = None,
    *,
    count: int = 1,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    priority: int = 0,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Hold ``count`` permits of semaphore ``name`` while the function runs.

    ``priority`` (-100..100, higher first) orders the waiters, as for
    ``Client.semaphore``.

    Raises (at decoration): InvalidArgument / InvalidName for bad arguments.
    Raises (per call): AcquireTimeout, SemaphoreLost (see ``Client.semaphore``).
    """
    r = SemaphoreRequest.parse(name, permits, count, ttl, timeout, priority)
    return guard_decorator(
        lambda c: c.semaphore(
            r.name, r.permits, count=r.count, ttl=r.ttl, timeout=r.timeout, priority=r.priority
        ),
        lambda c: c.semaphore(
            r.name, r.permits, count=r.count, ttl=r.ttl, timeout=r.timeout, priority=r.priority
        ),
        client,
    )


def with_mutex(
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    priority: int = 0,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Hold mutex ``name`` while the function runs (exclusive, by ``priority``, then
    first come first served).

    Raises (per call): AcquireTimeout, MutexLost (see ``Client.mutex``).
    """
    name, parsed, wait = validate_name(name), check.ttl(ttl), check.timeout(timeout)
    rank = check.priority(priority)
    return guard_decorator(
        lambda c: c.mutex(name, ttl=parsed, timeout=wait, priority=rank),
        lambda c: c.mutex(name, ttl=parsed, timeout=wait, priority=rank),
        client,
    )


def with_rate_limit(
    name: str,
    rate: Rate,
    *,
    burst: float | None = None,
    cost: float = 1,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Spend ``cost`` tokens of rate limit ``name`` before each call runs.

    The client keeps one membership of the limit for all calls (joined on the
    first, left when the client closes), so a call costs no API request.

    Raises (at decoration): InvalidArgument / InvalidName for bad arguments.
    Raises (per call): AcquireTimeout, CorruptState (see ``Client.acquire_rate_limit``).
    """
    r = RateLimitRequest.parse(name, rate, burst, ttl)
    tokens, wait = parse_cost(cost), check.timeout(timeout)

    async def async_around(c: Client, thunk: Callable[[], Awaitable[Any]]) -> Any:
        await c.acquire_rate_limit(
            r.name, r.rate, burst=r.burst, cost=tokens, ttl=r.ttl, timeout=wait
        )
        return await thunk()

    def sync_around(c: SyncClient, thunk: Callable[[], Any]) -> Any:
        c.acquire_rate_limit(r.name, r.rate, burst=r.burst, cost=tokens, ttl=r.ttl, timeout=wait)
        return thunk()

    return _around(async_around, sync_around, client)


def _around(
    async_around: Callable[[Client, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    sync_around: Callable[[SyncClient, Callable[[], Any]], Any],
    client: Client | SyncClient | None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator that hands the call, as a thunk, to the right client's operation."""

    @wrapt.decorator
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(wrapped):
            if isinstance(client, SyncClient):
                raise InvalidArgument(
                    f"{wrapped.__qualname__} is async but was decorated with a SyncClient; "
                    "pass a konductor.Client (or no client)",
                    argument="client",
                )

            async def call_async() -> Any:
                # The client is looked up when the coroutine runs, on its own loop:
                # ``f()`` may be called outside any loop (``asyncio.run(f())``).
                return await async_around(
                    client or default_client(), lambda: wrapped(*args, **kwargs)
                )

            return call_async()
        if isinstance(client, Client):
            raise InvalidArgument(
                f"{wrapped.__qualname__} is not async but was decorated with an async "
                "konductor.Client; pass a konductor.SyncClient (or no client)",
                argument="client",
            )
        return sync_around(client or default_sync_client(), lambda: wrapped(*args, **kwargs))

    return cast(Callable[[Callable[P, R]], Callable[P, R]], wrapper)


def with_lease(
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the function only while holding leadership of Lease ``name``.

    Each call waits for the lease (up to ``timeout``), runs, and releases it.
    For a long-running leader loop, use ``Client.campaign`` instead.

    Raises (per call): AcquireTimeout, LeaseLost (see ``Client.lease``).
    """
    name, parsed, wait = validate_name(name), check.ttl(ttl), check.timeout(timeout)
    return guard_decorator(
        lambda c: c.lease(name, ttl=parsed, timeout=wait),
        lambda c: c.lease(name, ttl=parsed, timeout=wait),
        client,
    )


def once(
    name: str,
    *,
    ttl: Duration = DEFAULT_TTL,
    timeout: Duration | None = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Run the function once cluster-wide under the name ``name``.

    The first caller anywhere runs it and gets its result; concurrent callers
    wait for the outcome and get ``None``; later calls return ``None`` at once.
    A failure is recorded and the next caller runs it again (see ``Client.once``).

    Raises (per call): OnceFailed (another runner's attempt failed while we
    waited), WaitTimeout, LostError.
    """
    name, parsed, wait = validate_name(name), check.ttl(ttl), check.timeout(timeout)

    async def async_around(c: Client, thunk: Callable[[], Awaitable[Any]]) -> Any:
        return await c.once(name, thunk, ttl=parsed, timeout=wait)

    def sync_around(c: SyncClient, thunk: Callable[[], Any]) -> Any:
        return c.once(name, thunk, ttl=parsed, timeout=wait)

    return cast(
        Callable[[Callable[P, R]], Callable[P, R | None]],
        _around(async_around, sync_around, client),
    )


def barrier(
    name: str,
    expected: int | None = None,
    *,
    timeout: Duration | None = None,
    party: str | None = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Arrive at barrier ``name`` and wait until it opens before each call runs.

    Raises (per call): WaitTimeout (the barrier did not open in time), NotFound
    (missing barrier and no ``expected``).
    """
    name, wait = validate_name(name), check.timeout(timeout)
    if expected is not None:
        check.positive_int(expected, "expected")

    async def async_around(c: Client, thunk: Callable[[], Awaitable[Any]]) -> Any:
        await c.arrive_and_wait(name, expected, party=party, timeout=wait)
        return await thunk()

    def sync_around(c: SyncClient, thunk: Callable[[], Any]) -> Any:
        c.arrive_and_wait(name, expected, party=party, timeout=wait)
        return thunk()

    return _around(async_around, sync_around, client)
