"""The blocking twin of :class:`Admin`, for :class:`konductor.SyncClient`.

Each method is derived from its :class:`Admin` namesake (same signature,
same docstring, typed through ``ParamSpec``) and runs it on the SyncClient's
event-loop thread: nothing is re-declared, so the twins cannot drift. The
watches (``watch``, ``watch_status``) are async iterators and have no
blocking twin: use ``Client.admin`` in an ``asyncio`` program for those.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from ._admin import Admin

P = ParamSpec("P")
T = TypeVar("T")


class Caller(Protocol):
    """Runs a coroutine function on the SyncClient's loop thread and returns its result."""

    def __call__(self, fn: Callable[[], Awaitable[T]]) -> T: ...


def _blocking(
    method: Callable[Concatenate[Admin, P], Awaitable[T]],
) -> Callable[Concatenate[SyncAdmin, P], T]:
    @functools.wraps(method)
    def run(self: SyncAdmin, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._call(lambda: method(self._admin(), *args, **kwargs))

    return run


class SyncAdmin:
    """:class:`Admin` for :class:`konductor.SyncClient`: the same methods, blocking."""

    def __init__(self, call: Caller, admin: Callable[[], Admin]) -> None:
        self._call = call
        self._admin = admin

    describe = _blocking(Admin.describe)
    status = _blocking(Admin.status)
    force_release = _blocking(Admin.force_release)
    delete = _blocking(Admin.delete)
    repair = _blocking(Admin.repair)
    create_semaphore = _blocking(Admin.create_semaphore)
