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
- the process lifecycle (:mod:`konductor._lifecycle`: fork and exit hooks);
- fair shares (:func:`fair_split`) and what an adapter needs to compute them
  from a semaphore: acquisitions that record a note on their entry
  (:func:`acquire_semaphore_noted`, :func:`sync_acquire_semaphore_noted`) and
  the parser of a semaphore's status (:func:`semaphore_entries`).

It is not public: users import from ``konductor``. A new adapter adds what it
needs here rather than importing a private module (the layering test,
``tests/test_layering.py``, enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from konductor import _defaults
from konductor import _lifecycle as lifecycle
from konductor._backoff import Backoff
from konductor._client import Client
from konductor._config import store_from_spec
from konductor._defaults import Settings
from konductor._engine import _queue_state as queue_state
from konductor._engine._fair import fair_split
from konductor._engine._queue_state import Slot
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
from konductor._primitives._semaphore import Permit, SemaphoreRequest
from konductor._primitives._semaphore import make as _semaphore
from konductor._sync import SyncClient, SyncGrant
from konductor._typing import ExcInfo


def configured() -> Settings:
    """What :func:`konductor.configure` last set (store, namespace, identity)."""
    return _defaults.settings()


async def acquire_semaphore_noted(
    client: Client, request: SemaphoreRequest, note: Mapping[str, Any], *, blocking: bool
) -> Permit | None:
    """``acquire_semaphore`` (``blocking``, up to ``request.timeout``) or
    ``try_acquire_semaphore`` (not blocking: ``None`` when not free), recording
    ``note`` (JSON values) on the queue ticket and the holder entry as they are.

    Why: an adapter that shares a semaphore fairly (the SQLAlchemy engine)
    publishes each member's id and demand where every other member reads
    them, in the same object, at no extra write. The note never changes
    what is granted.

    Raises:
        AcquireTimeout: as ``acquire_semaphore``.
        StoreUnavailable: a non-blocking try could not reach the store.
    """
    site = _semaphore(client._rt, request, dict(note))
    if blocking:
        return await site.acquire(request.timeout)
    return await site.acquire(0, blocking=False)


def sync_acquire_semaphore_noted(
    client: SyncClient, request: SemaphoreRequest, note: Mapping[str, Any], *, blocking: bool
) -> SyncGrant[Permit] | None:
    """The blocking twin of :func:`acquire_semaphore_noted`, on a SyncClient's loop."""
    permit = client._call(
        lambda: acquire_semaphore_noted(client._async(), request, note, blocking=blocking)
    )
    return None if permit is None else SyncGrant(permit, client)


def semaphore_entries(status: Mapping[str, Any]) -> tuple[tuple[Slot, ...], tuple[Slot, ...]]:
    """A semaphore's status (``ObjectStatus.status``) parsed: (holders, queue tickets).

    Each :class:`Slot` keeps the fields konductor does not know in ``extra``
    (a note of :func:`acquire_semaphore_noted`): untrusted, check them.

    Raises:
        CorruptState: the status does not parse (decide nothing on it).
    """
    state = queue_state.parse(status)
    return state.holders, state.queue


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
    "Slot",
    "Ttl",
    "acquire_semaphore_noted",
    "async_callable",
    "configured",
    "fair_split",
    "lifecycle",
    "parse_conditions",
    "parse_cost",
    "parse_rate",
    "positive_int",
    "priority",
    "seconds",
    "semaphore_entries",
    "store_from_spec",
    "sync_acquire_semaphore_noted",
    "timeout",
    "ttl",
)
