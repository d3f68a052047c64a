"""The kinds of object konductor keeps in a store.

One custom resource kind per primitive in group ``konductor.io/v1alpha1``, the
built-in ``coordination.k8s.io/v1`` Lease for leader election (so Go services
using client-go can contend for the same lease), and the built-in
``batch/v1`` Job, which gates may watch as a condition.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "konductor.io"
VERSION = "v1alpha1"


@dataclass(frozen=True)
class Kind:
    """Where a kind of object lives in the Kubernetes API, and how it is written.

    ``has_status`` is true for kinds with a status subresource: their spec and
    status are written by separate calls, and a create writes only the spec.
    """

    kind: str
    plural: str
    group: str
    version: str
    has_status: bool
    builtin: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        """``plural.group``, as RBAC rules and kubectl name it."""
        return f"{self.plural}.{self.group}"

    def __str__(self) -> str:
        return self.kind


def _crd(kind: str, plural: str, *short: str) -> Kind:
    return Kind(kind, plural, GROUP, VERSION, has_status=True, builtin=False, short_names=short)


SEMAPHORE = _crd("Semaphore", "semaphores", "ksem")
BARRIER = _crd("Barrier", "barriers", "kbar")
GATE = _crd("Gate", "gates", "kgate")
MUTEX = _crd("Mutex", "mutexes", "kmutex")
RWMUTEX = _crd("RWMutex", "rwmutexes", "krwmutex")
ONCE = _crd("Once", "onces", "konce")
WAITGROUP = _crd("WaitGroup", "waitgroups", "kwg")
RATELIMIT = _crd("RateLimit", "ratelimits", "krl")

LEASE = Kind("Lease", "leases", "coordination.k8s.io", "v1", has_status=False, builtin=True)
JOB = Kind("Job", "jobs", "batch", "v1", has_status=True, builtin=True)

CUSTOM_KINDS: tuple[Kind, ...] = (
    SEMAPHORE,
    BARRIER,
    GATE,
    MUTEX,
    RWMUTEX,
    ONCE,
    WAITGROUP,
    RATELIMIT,
)
ALL_KINDS: tuple[Kind, ...] = (*CUSTOM_KINDS, LEASE, JOB)

#: The kind of each primitive, by the name users give it (``Client.delete``,
#: ``konductor delete KIND NAME``).
PRIMITIVE_KINDS: dict[str, Kind] = {
    "semaphore": SEMAPHORE,
    "mutex": MUTEX,
    "rwmutex": RWMUTEX,
    "barrier": BARRIER,
    "gate": GATE,
    "once": ONCE,
    "waitgroup": WAITGROUP,
    "ratelimit": RATELIMIT,
    "lease": LEASE,
}
