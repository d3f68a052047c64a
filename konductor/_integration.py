"""The one internal seam the adapters (``konductor.integrations``) use.

Adapters are built on the public API (``konductor``, ``konductor.store``).
What they need beyond it lives here, and only here, so that the private
modules below can change without touching an adapter:

- the argument parsers every entry point uses (the same checks, the same
  messages, ``InvalidArgument.argument`` naming the parameter);
- the defaults (one :data:`DEFAULT_TTL`);
- what :func:`konductor.configure` set (:func:`configured`), the
  ``KONDUCTOR_STORE``-style store spec, and the retry backoff;
- ``ExcInfo``, the arguments of ``__exit__``;
- the process lifecycle (:mod:`konductor._lifecycle`: fork and exit hooks).

It is not public: users import from ``konductor``. A new adapter adds what it
needs here rather than importing a private module (the layering test,
``tests/test_layering.py``, enforces it).
"""

from __future__ import annotations

from konductor import _defaults
from konductor import _lifecycle as lifecycle
from konductor._backoff import Backoff
from konductor._config import store_from_spec
from konductor._defaults import Settings
from konductor._engine._runtime import DEFAULT_TTL
from konductor._engine._validate import (
    Duration,
    Ttl,
    async_callable,
    positive_int,
    priority,
    seconds,
    timeout,
    ttl,
)
from konductor._primitives._gate_state import Conditions, parse_conditions
from konductor._primitives._ratelimit import Rate, RateLimitRequest, parse_cost, parse_rate
from konductor._primitives._semaphore import SemaphoreRequest
from konductor._typing import ExcInfo


def configured() -> Settings:
    """What :func:`konductor.configure` last set (store, namespace, identity)."""
    return _defaults.settings()


__all__ = (
    "DEFAULT_TTL",
    "Backoff",
    "Conditions",
    "Duration",
    "ExcInfo",
    "Rate",
    "RateLimitRequest",
    "SemaphoreRequest",
    "Settings",
    "Ttl",
    "async_callable",
    "configured",
    "lifecycle",
    "parse_conditions",
    "parse_cost",
    "parse_rate",
    "positive_int",
    "priority",
    "seconds",
    "store_from_spec",
    "timeout",
    "ttl",
)
