"""The exception tree of konductor.

Every error konductor raises derives from :class:`KonductorError`, so a caller
can catch one class at the boundary. Transport errors (kubernetes_asyncio's
``ApiException``, aiohttp's client errors, sqlite errors) never escape: they are
translated into the classes below and chained with ``raise ... from``.

Decisions are taken on the HTTP status and the ``reason`` of the Kubernetes
``Status`` body, never on message text.

::

    KonductorError
    ├── InvalidArgument (ValueError)      bad input, raised before any API call
    │   └── InvalidName                   not a DNS-1123 subdomain
    ├── ConfigurationError                no store could be configured
    ├── ClientClosed (RuntimeError)       the client was used after close()
    ├── WaitTimeout (TimeoutError)        a wait did not end in time
    │   └── AcquireTimeout                not granted in time; nothing left behind
    ├── OnceFailed                        the once-function failed on its runner
    ├── CorruptState                      stored state does not parse; admits nobody
    ├── LostError                         a held grant was lost (not renewed in time)
    │   ├── SemaphoreLost
    │   ├── LeaseLost
    │   ├── MutexLost
    │   └── OnceLost
    └── StoreError                        a store call failed
        ├── NotFound                      the object does not exist
        ├── CRDNotInstalled               the resource type itself is missing
        ├── AlreadyExists                 create of an existing name
        ├── Conflict                      stale version (compare-and-swap lost)
        ├── Forbidden (PermissionError)   RBAC denied the call
        ├── Invalid                       the server rejected the object (422)
        ├── Expired                       a watch version was compacted (410)
        └── StoreUnavailable              network / 5xx / 429: retryable
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "AlreadyExists",
    "CRDNotInstalled",
    "ClientClosed",
    "ConfigurationError",
    "Conflict",
    "CorruptState",
    "Expired",
    "Forbidden",
    "Invalid",
    "InvalidArgument",
    "InvalidName",
    "KonductorError",
    "LeaseLost",
    "LostError",
    "MutexLost",
    "NotFound",
    "OnceFailed",
    "OnceLost",
    "SemaphoreLost",
    "StoreError",
    "StoreUnavailable",
    "WaitTimeout",
]


class KonductorError(Exception):
    """Root of every error raised by konductor."""


class InvalidArgument(KonductorError, ValueError):
    """An argument is out of range or malformed; raised before any API call.

    ``argument`` names the parameter at fault (``"ttl"``, ``"permits"``, ...)
    when the check knows it, so a front end (the CLI) can point at its own
    option without rewriting the message; ``None`` otherwise.
    """

    def __init__(self, message: str = "", *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class InvalidName(InvalidArgument):
    """A primitive name is not a valid Kubernetes object name (DNS-1123 subdomain)."""


class ConfigurationError(KonductorError):
    """konductor could not work out which store, namespace or identity to use."""


class ClientClosed(KonductorError, RuntimeError):
    """The client was used after it was closed.

    Closed by ``close()`` or at the end of its ``async with`` / ``with`` block.
    A programming mistake, not an outage: retrying cannot help. Call the
    method inside the client's block, or create a new client.
    """


class StoreError(KonductorError):
    """A call to the coordination store failed.

    ``status`` is the HTTP status where the store is the Kubernetes API (``None``
    otherwise) and ``reason`` the ``Status`` body's machine-readable reason.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(StoreError):
    """The named object does not exist."""


class CRDNotInstalled(StoreError):
    """The resource type (a konductor CustomResourceDefinition) is not installed."""


class AlreadyExists(StoreError):
    """An object with that name already exists."""


class Conflict(StoreError):
    """The object changed since the version the caller read (compare-and-swap lost)."""


class Forbidden(StoreError, PermissionError):
    """The store refused the call for lack of permission (Kubernetes RBAC)."""


class Invalid(StoreError):
    """The store rejected the object as invalid; ``fields`` names the offending fields."""

    def __init__(
        self,
        message: str,
        *,
        fields: tuple[str, ...] = (),
        status: int | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, status=status, reason=reason)
        self.fields = fields


class Expired(StoreError):
    """A watch was asked to resume from a version the store no longer keeps."""


class StoreUnavailable(StoreError):
    """The store could not be reached or is overloaded; the call may be retried."""


class WaitTimeout(KonductorError, TimeoutError):
    """A wait (for a grant, a barrier, a gate, ...) did not end within its timeout."""


class AcquireTimeout(WaitTimeout):
    """A grant could not be obtained within the requested timeout; nothing was left behind."""


class OnceFailed(KonductorError):
    """The once-function failed on the runner; ``error`` is what it recorded."""

    def __init__(self, message: str, *, error: str = "") -> None:
        super().__init__(message)
        self.error = error


class LostError(KonductorError):
    """A grant was lost while held: it could not be renewed in time, or was taken away.

    The guarded ``async with`` body has been cancelled; work it did after the
    loss may have overlapped with another holder (use the fencing token
    downstream to reject such writes).
    """


class SemaphoreLost(LostError):
    """A semaphore permit was lost while held."""


class LeaseLost(LostError):
    """Leadership (a Lease) was lost while held."""


class MutexLost(LostError):
    """A mutex (or read-write mutex) lock was lost while held."""


class OnceLost(LostError):
    """A once-runner's claim was lost while its function ran; nothing was recorded."""


class CorruptState(KonductorError):
    """An object's stored state does not parse, so konductor refuses to act on it.

    Anyone holding the Role, or ``kubectl edit``, can write an object's status;
    a shape konductor does not understand is never read as free capacity: the
    object admits nobody until it is repaired. ``kind``, ``name`` and
    ``namespace`` name the object and ``field`` the offending path (such as
    ``status.holders[0].count``). Not a :class:`StoreError`: the store call
    succeeded and retrying it returns the same bytes; only a repair helps
    (``kubectl edit`` the object, or delete it with ``konductor delete KIND NAME``).
    """

    def __init__(self, message: str, *, kind: str, name: str, namespace: str, field: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.field = field
