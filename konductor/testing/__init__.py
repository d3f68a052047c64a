"""Test helpers for konductor users and contributors.

- :class:`FakeClock`: pass ``Client(store, clock=FakeClock())`` and move time
  with ``await clock.advance(seconds)`` to test expiry, renewal deadlines and
  loss without sleeping.
- :func:`memory_client` / :func:`memory_sync_client`: clients on a fresh
  in-memory store, for unit tests of code that uses konductor.
- :func:`simulate_crash`: a client stops renewing without releasing, as a
  killed process would.
- the pytest plugin (:mod:`konductor.testing.plugin`, registered automatically):
  fixtures ``konductor_client``, ``konductor_sync_client``, ``konductor_clock``.
- :mod:`konductor.testing.apiserver`: a real kube-apiserver + etcd on loopback
  (imported on demand; it is not loaded by this package).
"""

from konductor._client import Client
from konductor._engine._clock import Clock, FakeClock
from konductor._store._memory import MemoryStore
from konductor._sync import SyncClient


def memory_client(
    *, namespace: str = "default", identity: str | None = None, clock: Clock | None = None
) -> Client:
    """An async client on a fresh in-memory store (one event loop, one process)."""
    return Client(MemoryStore(namespace), identity=identity, clock=clock)


def simulate_crash(client: Client) -> None:
    """Make ``client`` behave like a killed process: renewals stop, nothing is released.

    Its grants and queue tickets stay in the store until other clients judge
    them stale (a full TTL on their clocks); use with a :class:`FakeClock` to
    test what your code does when a holder dies.
    """
    client._rt.renewer.abandon()


def memory_sync_client(*, namespace: str = "default", identity: str | None = None) -> SyncClient:
    """A blocking client on a fresh in-memory store of its own."""
    return SyncClient(lambda: MemoryStore(namespace), identity=identity)


__all__ = ("FakeClock", "memory_client", "memory_sync_client", "simulate_crash")
