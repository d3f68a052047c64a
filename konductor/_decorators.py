"""Decorators that hold a cluster-wide grant while a function runs.

One entry point per primitive works unchanged on sync and async functions,
instance methods, classmethods and staticmethods (wrapt keeps the signature,
``__wrapped__`` and ``inspect.iscoroutinefunction``). Async callables use the
async client of the running loop; sync callables the process's SyncClient,
whose background loop keeps renewing while the function runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import wrapt

from konductor._client import Client
from konductor._defaults import default_client, default_sync_client
from konductor._errors import InvalidArgument
from konductor._names import validate_name
from konductor._primitives import _validate as check
from konductor._primitives._grant import Guarded
from konductor._primitives._runtime import DEFAULT_TTL
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

    @wrapt.decorator
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(wrapped):
            if isinstance(client, SyncClient):
                raise InvalidArgument(
                    f"{wrapped.__qualname__} is async but was decorated with a SyncClient; "
                    "pass a konductor.Client (or no client)"
                )

            async def run() -> Any:
                async with async_guard(client or default_client()):
                    return await wrapped(*args, **kwargs)

            return run()
        if isinstance(client, Client):
            raise InvalidArgument(
                f"{wrapped.__qualname__} is not async but was decorated with an async "
                "konductor.Client; pass a konductor.SyncClient (or no client)"
            )
        with sync_guard(client or default_sync_client()):
            return wrapped(*args, **kwargs)

    return cast(Callable[[Callable[P, R]], Callable[P, R]], wrapper)


def _checked(name: str, ttl: object, timeout: object) -> None:
    # Bad arguments fail at decoration time, not at the first call.
    validate_name(name)
    check.ttl(ttl)
    check.timeout(timeout)


def with_semaphore(
    name: str,
    permits: int | None = None,
    *,
    count: int = 1,
    ttl: object = DEFAULT_TTL,
    timeout: object = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Hold ``count`` permits of semaphore ``name`` while the function runs.

    Raises (at decoration): InvalidArgument / InvalidName for bad arguments.
    Raises (per call): AcquireTimeout, SemaphoreLost (see ``Client.semaphore``).
    """
    _checked(name, ttl, timeout)
    if permits is not None:
        check.positive_int(permits, "permits")
    check.positive_int(count, "count")
    if permits is not None and count > permits:
        raise InvalidArgument(f"count={count} is more than permits={permits}")
    return guard_decorator(
        lambda c: c.semaphore(name, permits, count=count, ttl=ttl, timeout=timeout),
        lambda c: c.semaphore(name, permits, count=count, ttl=ttl, timeout=timeout),
        client,
    )


def with_mutex(
    name: str,
    *,
    ttl: object = DEFAULT_TTL,
    timeout: object = None,
    client: Client | SyncClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Hold mutex ``name`` while the function runs (exclusive, first come first served).

    Raises (per call): AcquireTimeout, MutexLost (see ``Client.mutex``).
    """
    _checked(name, ttl, timeout)
    return guard_decorator(
        lambda c: c.mutex(name, ttl=ttl, timeout=timeout),
        lambda c: c.mutex(name, ttl=ttl, timeout=timeout),
        client,
    )
