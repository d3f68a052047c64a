"""The async client: one store, one identity, one renewal loop per process.

This is the surface most users touch. Configuration resolution (environment,
in-cluster, kubeconfig) grows here; today a store is passed explicitly or a
KubernetesStore is built from the kubeconfig / service account.
"""

from __future__ import annotations

import os
import secrets
import socket
from types import TracebackType

from konductor._names import validate_namespace
from konductor._primitives import _semaphore
from konductor._primitives._clock import Clock, SystemClock
from konductor._primitives._runtime import Runtime
from konductor._primitives._semaphore import Permit, SemaphoreContext
from konductor._primitives._validate import timeout as check_timeout
from konductor._store._base import Store

DEFAULT_TTL = 15.0


def default_identity() -> str:
    """Pod (or host) name + pid + random suffix: unique per process, even in one pod."""
    base = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{base}-{os.getpid()}-{secrets.token_hex(3)}"


class Client:
    """Cluster-wide coordination primitives, async API.

    ``store`` is any :class:`konductor.store.Store`; without one, a
    :class:`KubernetesStore` is built from the pod's service account or the
    kubeconfig. Use as ``async with Client(...) as client``; closing stops
    renewals and releases what is still held.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        namespace: str | None = None,
        identity: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if store is None:
            from konductor._kube._config import in_cluster
            from konductor._store._kubernetes import KubernetesStore

            store = KubernetesStore(namespace, in_cluster=in_cluster())
        elif namespace is not None and validate_namespace(namespace) != store.namespace:
            from konductor._errors import InvalidArgument

            raise InvalidArgument(
                f"namespace={namespace!r} differs from the store's namespace {store.namespace!r}"
            )
        self.store = store
        self.identity = identity or default_identity()
        self._rt = Runtime(store, clock or SystemClock(), self.identity)

    @property
    def namespace(self) -> str:
        return self.store.namespace

    # -- semaphore --------------------------------------------------------------------

    def semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> SemaphoreContext:
        """``async with client.semaphore("payments-api", permits=3) as permit:``.

        Created with ``permits`` if missing; if it exists the cluster's spec
        wins (a mismatch is logged). Waiters are served first come, first served.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
            SemaphoreLost: (on exit) the permit was lost while the body ran;
                the body was cancelled.
        """
        sem = _semaphore.make(self._rt, name, permits, count, ttl)
        return SemaphoreContext(sem, check_timeout(timeout))

    async def acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
        timeout: object = None,
    ) -> Permit:
        """Acquire and return a :class:`Permit`; call ``await permit.release()``.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: no permit within ``timeout`` seconds.
        """
        sem = _semaphore.make(self._rt, name, permits, count, ttl)
        permit = await sem.acquire(check_timeout(timeout))
        assert permit is not None
        return permit

    async def try_acquire_semaphore(
        self,
        name: str,
        permits: int | None = None,
        *,
        count: int = 1,
        ttl: object = DEFAULT_TTL,
    ) -> Permit | None:
        """A permit if one is free and nobody is queued ahead, else ``None`` (no wait)."""
        sem = _semaphore.make(self._rt, name, permits, count, ttl)
        return await sem.acquire(0, blocking=False)

    # -- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Release everything still held or queued, stop renewals, close the store."""
        await self._rt.close()
        await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
