"""Prometheus metrics for konductor (the ``konductor[prometheus]`` extra).

Nothing is measured until :func:`instrument` is called; then every client of
the process reports into the given ``CollectorRegistry`` (prometheus_client's
default ``REGISTRY`` unless another is given). Call it once at start-up,
before work starts; expose the registry the usual way (``start_http_server``,
``make_asgi_app``, or prometheus_client's multiprocess collector for Celery
prefork workers: see docs/observability.md).

Every value is this process's own view: sum over processes (``sum by
(namespace, primitive, name)``) for the cluster-wide picture. Labels are
``primitive``, ``name`` and ``namespace`` (and ``result``/``reason``/``verb``/
``outcome`` from small fixed sets), never holder identities or anything else
without a bound. ``leader_election_master_status{name}`` has client-go's
name and meaning (1 while this process leads the Lease ``name``, else 0), so
dashboards and alerts written for Go controllers work unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "konductor.metrics needs prometheus_client: pip install 'konductor[prometheus]'"
    ) from exc

from konductor import _observe as observe
from konductor._observe import Attempt, Hold, Site

__all__ = ["ACQUIRE_RESULTS", "LOST_REASONS", "Metrics", "instrument", "uninstrument"]

#: Values of the ``result`` label of ``konductor_acquisitions_total``.
ACQUIRE_RESULTS = ("granted", "busy", "timeout", "cancelled", "error")
#: Values of the ``reason`` label of ``konductor_lost_total``.
LOST_REASONS = (
    observe.RENEWAL_DEADLINE,
    observe.REMOVED_BY_OTHER,
    observe.DELETED,
    observe.PREFERRED_HOLDER,
    observe.OTHER,
)
#: Seconds: from an uncontended grant (a few ms) to a job that waited an hour.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds: from a short critical section to a day-long leadership.
HOLD_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

SITE = ("primitive", "name", "namespace")


@dataclass(eq=False)
class _Children:
    """The labelled series of one site (prometheus_client's ``labels()`` is not free)."""

    held: Any
    waiting: Any
    acquire_wait: Any
    hold: Any
    takeovers: Any
    renewals: Any
    renewal_failures: Any
    watch_reconnects: Any
    results: dict[str, Any]
    lost: dict[str, Any]


@dataclass(eq=False)
class Metrics(observe.Observer):
    """The metrics of one registry; made by :func:`instrument`, ended by :func:`uninstrument`."""

    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.held = Gauge(
            "konductor_held",
            "Grants (permits, locks, leaderships) this process holds now.",
            SITE,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "konductor_waiting",
            "Blocking acquire calls of this process waiting now.",
            SITE,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.acquire_wait = Histogram(
            "konductor_acquire_wait_seconds",
            "Seconds from an acquire call to its grant (granted acquisitions only).",
            SITE,
            registry=r,
            buckets=WAIT_BUCKETS,
        )
        self.hold = Histogram(
            "konductor_hold_seconds",
            "Seconds a grant was held, observed when it was released or lost.",
            SITE,
            registry=r,
            buckets=HOLD_BUCKETS,
        )
        self.acquisitions = Counter(
            "konductor_acquisitions",
            "Acquire calls by result: granted, busy (a try that found no room), timeout, "
            "cancelled, error.",
            (*SITE, "result"),
            registry=r,
        )
        self.lost = Counter(
            "konductor_lost",
            "Grants lost while held, by reason: renewal_deadline, removed_by_other, deleted, "
            "preferred_holder, other.",
            (*SITE, "reason"),
            registry=r,
        )
        self.takeovers = Counter(
            "konductor_takeovers",
            "Grants made by taking over from expired holders (their entries were reclaimed).",
            SITE,
            registry=r,
        )
        self.renewals = Counter(
            "konductor_renewals",
            "Successful renewal writes (one write renews every entry of the process on "
            "the object).",
            SITE,
            registry=r,
        )
        self.renewal_failures = Counter(
            "konductor_renewal_failures",
            "Renewal writes that failed (retried within the holder's deadline).",
            SITE,
            registry=r,
        )
        self.watch_reconnects = Counter(
            "konductor_watch_reconnects",
            "Watches reopened after they failed or went silent.",
            SITE,
            registry=r,
        )
        self.api_requests = Counter(
            "konductor_api_requests",
            "Kubernetes API requests by verb, primitive and outcome (ok, conflict, "
            "already_exists, not_found, forbidden, invalid, expired, throttled, "
            "server_error, unavailable, error).",
            ("verb", "primitive", "outcome"),
            registry=r,
        )
        self.api_retries = Counter(
            "konductor_api_retries",
            "Kubernetes API requests sent again after a retryable failure.",
            ("verb", "primitive"),
            registry=r,
        )
        self.leader = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease. "
            "Please make sure to group by name.",
            ("name",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self._sites: dict[Site, _Children] = {}
        self._lock = threading.Lock()

    def _of(self, site: Site) -> _Children:
        children = self._sites.get(site)
        if children is None:
            # Every series of the site, made at 0 on first use, so that rate() and
            # increase() see its first increment (and later calls skip labels()).
            labels = (site.primitive, site.name, site.namespace)
            children = _Children(
                held=self.held.labels(*labels),
                waiting=self.waiting.labels(*labels),
                acquire_wait=self.acquire_wait.labels(*labels),
                hold=self.hold.labels(*labels),
                takeovers=self.takeovers.labels(*labels),
                renewals=self.renewals.labels(*labels),
                renewal_failures=self.renewal_failures.labels(*labels),
                watch_reconnects=self.watch_reconnects.labels(*labels),
                results={r: self.acquisitions.labels(*labels, r) for r in ACQUIRE_RESULTS},
                lost={r: self.lost.labels(*labels, r) for r in LOST_REASONS},
            )
            if site.primitive == "lease":
                self.leader.labels(site.name)
            with self._lock:
                children = self._sites.setdefault(site, children)
        return children

    # -- the observer ---------------------------------------------------------------------

    def acquire_started(self, att: Attempt) -> None:
        children = self._of(att.site)
        if att.blocking:
            children.waiting.inc()

    def acquire_ended(self, att: Attempt) -> None:
        children = self._of(att.site)
        if att.blocking:
            children.waiting.dec()
        children.results[att.result].inc()
        if att.result == "granted":
            children.acquire_wait.observe(att.wait)

    def granted(self, hold: Hold) -> None:
        self._of(hold.site).held.inc()

    def hold_ended(self, hold: Hold) -> None:
        children = self._of(hold.site)
        children.held.dec()
        children.hold.observe(hold.held)
        if hold.reason is not None:
            children.lost[hold.reason].inc()

    def takeover(self, site: Site, expired: int) -> None:
        self._of(site).takeovers.inc()

    def leadership(self, site: Site, leading: bool) -> None:
        self.leader.labels(site.name).set(1 if leading else 0)

    def renewed(self, site: Site, ok: bool) -> None:
        children = self._of(site)
        (children.renewals if ok else children.renewal_failures).inc()

    def watch_reconnected(self, site: Site, why: str) -> None:
        self._of(site).watch_reconnects.inc()

    def api_request(self, verb: str, primitive: str, outcome: str) -> None:
        self.api_requests.labels(verb, primitive, outcome).inc()

    def api_retry(self, verb: str, primitive: str) -> None:
        self.api_retries.labels(verb, primitive).inc()

    def close(self) -> None:
        """Stop measuring and remove these metrics from their registry."""
        observe.uninstall(self)
        for metric in (
            self.held,
            self.waiting,
            self.acquire_wait,
            self.hold,
            self.acquisitions,
            self.lost,
            self.takeovers,
            self.renewals,
            self.renewal_failures,
            self.watch_reconnects,
            self.api_requests,
            self.api_retries,
            self.leader,
        ):
            self.registry.unregister(metric)


_instruments: dict[int, Metrics] = {}
_guard = threading.Lock()


def instrument(registry: CollectorRegistry = REGISTRY) -> Metrics:
    """Measure every konductor client of this process into ``registry``.

    Idempotent: a second call with the same registry returns the same
    :class:`Metrics`. Grants made before the call are not counted as held;
    call it at start-up.

    Raises:
        ValueError: (from prometheus_client) ``registry`` already holds a metric
            of one of konductor's names that konductor did not register.
    """
    with _guard:
        metrics = _instruments.get(id(registry))
        if metrics is None or metrics.registry is not registry:
            metrics = _instruments[id(registry)] = Metrics(registry)
        observe.install(metrics)
        return metrics


def uninstrument(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop measuring into ``registry`` and unregister konductor's metrics (idempotent)."""
    with _guard:
        metrics = _instruments.pop(id(registry), None)
    if metrics is not None and metrics.registry is registry:
        metrics.close()
