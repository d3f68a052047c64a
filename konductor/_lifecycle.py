"""The process lifecycle: the one place that hooks ``fork()`` and interpreter exit.

Whatever holds per-process state (the SyncClient's loop thread, a
CoordinatedEngine's reservation) registers here instead of calling
``os.register_at_fork`` or ``threading._register_atexit`` itself, so the order
in which those hooks run is decided in one place:

- after ``fork()``, in the child, callbacks run in registration order (the
  clients forget their parent's loop before the engines built on them do);
- at interpreter exit, callbacks run in reverse registration order (an engine
  gives its permits back through its client before that client closes).

Exit hooks are registered with ``threading._register_atexit`` after
concurrent.futures' own hook, so they run before the interpreter stops its
thread pools (those hooks run in reverse order): a plain ``atexit`` hook runs
after, too late for the network calls a release needs (the Kubernetes client
resolves proxy settings on a worker thread). A multiprocessing child leaves
through ``os._exit()``, which runs no exit hook: :func:`on_exit` with
``also_in_multiprocessing_child=True`` also registers with multiprocessing's finalizers.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook is registered before ours
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("konductor")

Hook = Callable[[], None]

_after_fork: list[Hook] = []
_at_exit: list[Hook] = []
_finalized: dict[Hook, int] = {}  # hook -> the pid its multiprocessing finalizer was made in


def on_fork_in_child(hook: Hook) -> None:
    """Call ``hook()`` in the child after every ``fork()`` (registration order)."""
    _after_fork.append(hook)


def on_exit(hook: Hook, *, also_in_multiprocessing_child: bool = False) -> None:
    """Call ``hook()`` at interpreter exit (reverse registration order).

    With ``also_in_multiprocessing_child=True`` the hook also runs when a multiprocessing
    child exits (they skip interpreter exit hooks); call it again in each
    process that may be such a child (it registers once per process).
    """
    if hook not in _at_exit:
        _at_exit.append(hook)
    if also_in_multiprocessing_child and _finalized.get(hook) != os.getpid():
        _finalized[hook] = os.getpid()
        import multiprocessing.util

        multiprocessing.util.Finalize(None, hook, exitpriority=10)


def _run_after_fork() -> None:
    for hook in list(_after_fork):
        hook()


def _run_at_exit() -> None:
    for hook in reversed(list(_at_exit)):
        try:
            hook()
        except Exception:  # exit must go on: what is not released expires after its TTL
            log.warning("a konductor exit hook failed", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_after_fork)
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_run_at_exit)
else:  # pragma: no cover - CPython has had it since 3.9
    atexit.register(_run_at_exit)
