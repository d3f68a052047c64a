"""konductor: cluster-wide coordination primitives stored in the Kubernetes API.

Semaphore, barrier, lease / leader election, gate, mutex, read-write mutex,
once, wait group and rate limit, kept as objects in the API server you already run: no
operator, no extra infrastructure. Meant for job-level coordination (startup,
batch work, long jobs), never for a per-request path.

``import konductor`` imports no optional dependency and does not import the
Kubernetes client until a Kubernetes store is first used.
"""

from konductor._admin import (
    Admin,
    EntryStatus,
    NamespaceStatus,
    ObjectStatus,
    RepairReport,
    SyncAdmin,
    Transition,
)
from konductor._client import Client
from konductor._decorators import (
    barrier,
    once,
    with_lease,
    with_mutex,
    with_rate_limit,
    with_semaphore,
)
from konductor._defaults import configure
from konductor._errors import (
    AcquireTimeout,
    AlreadyExists,
    ClientClosed,
    ConfigurationError,
    Conflict,
    CorruptState,
    CRDNotInstalled,
    Expired,
    Forbidden,
    Invalid,
    InvalidArgument,
    InvalidName,
    KonductorError,
    LeaseLost,
    LostError,
    MutexLost,
    NotFound,
    OnceFailed,
    OnceLost,
    SemaphoreLost,
    StoreError,
    StoreUnavailable,
    WaitTimeout,
)
from konductor._names import validate_name
from konductor._primitives._barrier import BarrierInfo
from konductor._primitives._gate import ConditionState, GateInfo
from konductor._primitives._gate_state import GateCondition
from konductor._primitives._lease import Lease
from konductor._primitives._mutex import Lock
from konductor._primitives._once import OnceStatus
from konductor._primitives._ratelimit import RateLimiter
from konductor._primitives._semaphore import Permit
from konductor._primitives._waitgroup import WaitGroupInfo
from konductor._store._kubernetes import KubernetesStore
from konductor._store._local import LocalStore
from konductor._store._memory import MemoryStore
from konductor._sync import SyncClient, SyncGrant, SyncGuard, SyncRateLimiter

__version__ = "0.1.0.dev0"

__all__ = (
    "AcquireTimeout",
    "Admin",
    "AlreadyExists",
    "BarrierInfo",
    "CRDNotInstalled",
    "Client",
    "ClientClosed",
    "ConditionState",
    "ConfigurationError",
    "Conflict",
    "CorruptState",
    "EntryStatus",
    "Expired",
    "Forbidden",
    "GateCondition",
    "GateInfo",
    "Invalid",
    "InvalidArgument",
    "InvalidName",
    "KonductorError",
    "KubernetesStore",
    "Lease",
    "LeaseLost",
    "LocalStore",
    "Lock",
    "LostError",
    "MemoryStore",
    "MutexLost",
    "NamespaceStatus",
    "NotFound",
    "ObjectStatus",
    "OnceFailed",
    "OnceLost",
    "OnceStatus",
    "Permit",
    "RateLimiter",
    "RepairReport",
    "SemaphoreLost",
    "StoreError",
    "StoreUnavailable",
    "SyncAdmin",
    "SyncClient",
    "SyncGrant",
    "SyncGuard",
    "SyncRateLimiter",
    "Transition",
    "WaitGroupInfo",
    "WaitTimeout",
    "__version__",
    "barrier",
    "configure",
    "once",
    "validate_name",
    "with_lease",
    "with_mutex",
    "with_rate_limit",
    "with_semaphore",
)

# Errors are raised across the library: name them as users import them, so a
# traceback reads ``konductor.AcquireTimeout``, not ``konductor._errors.AcquireTimeout``.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, KonductorError):
        _obj.__module__ = __name__
del _name, _obj
