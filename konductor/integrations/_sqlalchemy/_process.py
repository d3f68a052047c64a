"""The reservations of this process, and what fork and exit do to them.

Every CoordinatedEngine's reservation (a :class:`~._slots.Core`) registers
here. At interpreter exit the sync ones give their permits back (async ones
do on their loop's shutdown); after ``fork()`` the child forgets the parent's
grants and connections. When these run, and in which order with the
SyncClient's own hooks, is decided by :mod:`konductor._lifecycle`.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

from konductor._integration import lifecycle

log = logging.getLogger("konductor.sqlalchemy")


class Reservation(Protocol):
    """What the process hooks need of a reservation."""

    pid: int

    def after_fork(self) -> None: ...

    def shutdown(self) -> None: ...


_cores: weakref.WeakSet[Reservation] = weakref.WeakSet()


def register(core: Reservation) -> None:
    """Track ``core`` for the fork and exit hooks (a weak reference)."""
    _cores.add(core)


def _at_exit() -> None:
    """Give back what this process still holds (sync engines; async ones on loop shutdown)."""
    for core in list(_cores):
        if core.pid == os.getpid():
            try:
                core.shutdown()
            except Exception:
                log.warning("releasing a reservation at exit failed", exc_info=True)


def _after_fork_in_child() -> None:
    for core in list(_cores):
        core.after_fork()


def exit_hooks_in_this_process() -> None:
    """Called when a reservation starts: interpreter exit covers normal exits, and
    multiprocessing's children, which leave via ``os._exit()``, get a finalizer."""
    lifecycle.on_exit(_at_exit, also_in_multiprocessing_child=True)


lifecycle.on_exit(_at_exit)
lifecycle.on_fork_in_child(_after_fork_in_child)
