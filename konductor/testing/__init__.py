"""Test helpers for konductor users and contributors.

- :class:`FakeClock`: pass ``Client(store, clock=FakeClock())`` and move time
  with ``await clock.advance(seconds)`` to test expiry, renewal deadlines and
  loss without sleeping.
- :mod:`konductor.testing.apiserver`: a real kube-apiserver + etcd on loopback
  (imported on demand; it is not loaded by this package).
"""

from konductor._primitives._clock import FakeClock

__all__ = ("FakeClock",)
