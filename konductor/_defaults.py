"""The default clients the decorators use: created lazily, once per process and loop.

Decorated async functions need an async :class:`Client` on the running event
loop; decorated sync functions need the :class:`SyncClient` of this process.
Both are created on first use from :func:`configure`'s settings, or from the
environment (``KONDUCTOR_STORE``, in-cluster, kubeconfig) when nothing was
configured. A forked child gets its own (the SyncClient handles fork itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from konductor._client import Client
from konductor._store._base import Store
from konductor._sync import SyncClient


@dataclass(frozen=True)
class Settings:
    """What :func:`configure` set: the default clients are built from it."""

    store: Store | Callable[[], Store] | None = None
    namespace: str | None = None
    identity: str | None = None


_settings = Settings()
_lock = threading.Lock()
# Each loop's client, and the async generator that closes it at the loop's shutdown.
_async: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[Client, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()
_retired: list[tuple[Client, AsyncGenerator[None, None]]] = []
_sync: SyncClient | None = None


def configure(
    store: Store | Callable[[], Store] | None = None,
    *,
    namespace: str | None = None,
    identity: str | None = None,
) -> None:
    """Set what the decorators' default clients use.

    ``store`` is a store, or a zero-argument factory of stores (preferred: each
    event loop, and a forked child, then gets its own connections). Clients
    created before are dropped; call this at start-up, before decorated
    functions run.
    """
    global _settings, _sync
    with _lock:
        _settings = Settings(store, namespace, identity)
        # Clients dropped here may still be in use by running coroutines: keep
        # their closers alive, so each closes when its own loop shuts down.
        _retired.extend(entry for _, entry in _async.items())
        _async.clear()
        old, _sync = _sync, None
    if old is not None:
        old.close()


def settings() -> Settings:
    """What :func:`configure` last set (adapters build their own clients from it)."""
    return _settings


def _store() -> Store | None:
    source = _settings.store
    return source() if callable(source) and not isinstance(source, Store) else source


async def _closer(client: Client) -> AsyncGenerator[None, None]:
    """An async generator that closes ``client`` when its loop shuts down.

    It is advanced once, to its ``yield``, when the client is created; the
    loop's async-generator hooks then track it, and the loop's
    ``shutdown_asyncgens()`` (which ``asyncio.run`` calls before closing the
    loop) runs its ``finally`` on that loop: the client releases what it still
    holds and closes its HTTP session, so a script ends without "Unclosed
    client session" warnings.
    """
    try:
        yield
    finally:
        with _lock:
            # configure() may have replaced it, or a later loop reused the key.
            for loop, entry in list(_async.items()):
                if entry[0] is client:
                    del _async[loop]
            _retired[:] = [entry for entry in _retired if entry[0] is not client]
        with contextlib.suppress(Exception):
            await client.close()


def _start(closer: AsyncGenerator[None, None]) -> None:
    # Run the generator to its first ``yield`` without awaiting anything: the
    # step completes synchronously (StopIteration), and the running loop's
    # first-iteration hook has registered the generator for shutdown.
    step = closer.asend(None)
    try:
        step.send(None)
    except StopIteration:
        return
    raise AssertionError("the closer must reach its yield without awaiting")  # pragma: no cover


def default_client() -> Client:
    """The async client of the running event loop (created on first use).

    It is closed when that loop shuts down (``asyncio.run`` does this; a loop
    driven by hand needs ``loop.run_until_complete(loop.shutdown_asyncgens())``).

    Raises:
        ConfigurationError: nothing configured and nothing found in the environment.
        RuntimeError: no event loop is running in this thread.
    """
    loop = asyncio.get_running_loop()
    with _lock:
        entry = _async.get(loop)
        if entry is not None:
            return entry[0]
        client = Client(_store(), namespace=_settings.namespace, identity=_settings.identity)
        closer = _closer(client)
        _async[loop] = (client, closer)
    _start(closer)
    return client


def default_sync_client() -> SyncClient:
    """This process's blocking client (created on first use)."""
    global _sync
    with _lock:
        if _sync is None:
            source = _settings.store
            _sync = SyncClient(source, namespace=_settings.namespace, identity=_settings.identity)
        return _sync
