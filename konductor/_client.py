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

from konductor._admin import Admin
from konductor._config import resolve_store
from konductor._engine._clock import Clock, SystemClock
from konductor._engine._runtime import Runtime
from konductor._names import validate_namespace
from konductor._primitives._barrier import BarrierMethods
from konductor._primitives._gate import GateMethods
from konductor._primitives._lease import LeaseMethods
from konductor._primitives._mutex import MutexMethods
from konductor._primitives._once import OnceMethods
from konductor._primitives._ratelimit import RateLimitMethods
from konductor._primitives._semaphore import SemaphoreMethods
from konductor._primitives._waitgroup import WaitGroupMethods
from konductor._store._base import Store


def default_identity() -> str:
    """Pod (or host) name + pid + random suffix: unique per process, even in one pod."""
    base = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{base}-{os.getpid()}-{secrets.token_hex(3)}"


class Client(
    # Each primitive family adds its methods through a mixin that uses
    # ``self._rt`` (the Runtime); one base per line.
    SemaphoreMethods,
    LeaseMethods,
    MutexMethods,
    OnceMethods,
    BarrierMethods,
    GateMethods,
    WaitGroupMethods,
    RateLimitMethods,
):
    """Cluster-wide coordination primitives, async API.

    ``store`` is any :class:`konductor.store.Store`; without one it is
    resolved from ``KONDUCTOR_STORE``, the pod's service account or a
    kubeconfig (see :mod:`konductor._config`). ``identity`` names this process
    in every holder entry (default: pod or host name + pid + random suffix).
    ``ttl`` and ``timeout`` arguments take seconds or a ``timedelta``. Use as
    ``async with Client(...) as client``; closing releases what is still held.

    Raises:
        ConfigurationError: no store is configured, or ``KONDUCTOR_STORE`` is invalid.
        InvalidArgument: ``namespace`` differs from the given store's namespace.
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
            store = resolve_store(namespace)
        elif namespace is not None and validate_namespace(namespace) != store.namespace:
            from konductor._errors import InvalidArgument

            raise InvalidArgument(
                f"namespace={namespace!r} differs from the store's namespace {store.namespace!r}",
                argument="namespace",
            )
        self.store = store
        self.identity = identity or default_identity()
        self._rt = Runtime(store, clock or SystemClock(), self.identity)

    @property
    def namespace(self) -> str:
        return self.store.namespace

    @property
    def admin(self) -> Admin:
        """Inspect and administer any object: status, describe, watch, force-release,
        delete, repair (see :class:`konductor.Admin`)."""
        return Admin(self)

    # -- any primitive ----------------------------------------------------------------

    async def delete(self, kind: str, name: str) -> None:
        """Delete the object of primitive ``kind`` (``"semaphore"``, ``"mutex"``,
        ``"rwmutex"``, ``"barrier"``, ``"gate"``, ``"once"``, ``"waitgroup"``,
        ``"ratelimit"`` or ``"lease"``) named ``name``, whatever its state.

        This is the reset of the store's object: a barrier to meet again, a
        once to forget, an object whose state no longer parses. Whoever still
        holds or waits on it loses its grant at its next renewal (a ``LostError``)
        or sees the object gone; use it when they are done or dead. On
        Kubernetes it needs the ``delete`` verb (see docs/rbac.md).

        Raises:
            InvalidArgument: ``kind`` is not one of the primitives above.
            InvalidName: ``name`` is not a valid object name.
            NotFound: there is no such object.
            Forbidden: the store refused the delete (RBAC).
        """
        from konductor._errors import InvalidArgument
        from konductor._names import validate_name
        from konductor._store._kinds import PRIMITIVE_KINDS

        found = PRIMITIVE_KINDS.get(kind) if isinstance(kind, str) else None
        if found is None:
            raise InvalidArgument(
                f"kind={kind!r} is not a konductor primitive; use one of: "
                + ", ".join(PRIMITIVE_KINDS),
                argument="kind",
            )
        await self._rt.store.delete(found, validate_name(name))

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
