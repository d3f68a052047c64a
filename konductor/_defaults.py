"""The default clients the decorators use: created lazily, once per process and loop.

Decorated async functions need an async :class:`Client` on the running event
loop; decorated sync functions need the :class:`SyncClient` of this process.
Both are created on first use from :func:`configure`'s settings, or from the
environment (``KONDUCTOR_STORE``, in-cluster, kubeconfig) when nothing was
configured. A forked child gets its own (the SyncClient handles fork itself).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from konductor._client import Client
from konductor._store._base import Store
from konductor._sync import SyncClient


@dataclass(frozen=True)
class _Settings:
    store: Store | Callable[[], Store] | None = None
    namespace: str | None = None
    identity: str | None = None


_settings = _Settings()
_lock = threading.Lock()
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()
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
        _settings = _Settings(store, namespace, identity)
        _async.clear()
        old, _sync = _sync, None
    if old is not None:
        old.close()


def _store() -> Store | None:
    source = _settings.store
    return source() if callable(source) and not isinstance(source, Store) else source


def default_client() -> Client:
    """The async client of the running event loop (created on first use).

    Raises:
        ConfigurationError: nothing configured and nothing found in the environment.
    """
    loop = asyncio.get_running_loop()
    with _lock:
        client = _async.get(loop)
        if client is None:
            client = Client(_store(), namespace=_settings.namespace, identity=_settings.identity)
            _async[loop] = client
        return client


def default_sync_client() -> SyncClient:
    """This process's blocking client (created on first use)."""
    global _sync
    with _lock:
        if _sync is None:
            source = _settings.store
            _sync = SyncClient(source, namespace=_settings.namespace, identity=_settings.identity)
        return _sync
