"""The versioned-object store protocol and its backends.

Most users never touch this layer: the client picks a store. It is public for
people writing their own backend (hold it to ``tests/conformance``) and for
tests that want to inspect what a primitive wrote.
"""

from konductor._store._base import (
    ObjectList,
    Store,
    StoredObject,
    WatchEvent,
    version_newer,
)
from konductor._store._kinds import (
    ALL_KINDS,
    BARRIER,
    CUSTOM_KINDS,
    GATE,
    JOB,
    LEASE,
    MUTEX,
    ONCE,
    RATELIMIT,
    RWMUTEX,
    SEMAPHORE,
    WAITGROUP,
    Kind,
)
from konductor._store._kubernetes import KubernetesStore
from konductor._store._local import LocalStore
from konductor._store._memory import MemoryStore

__all__ = (
    "ALL_KINDS",
    "BARRIER",
    "CUSTOM_KINDS",
    "GATE",
    "JOB",
    "LEASE",
    "MUTEX",
    "ONCE",
    "RATELIMIT",
    "RWMUTEX",
    "SEMAPHORE",
    "WAITGROUP",
    "Kind",
    "KubernetesStore",
    "LocalStore",
    "MemoryStore",
    "ObjectList",
    "Store",
    "StoredObject",
    "WatchEvent",
    "version_newer",
)
