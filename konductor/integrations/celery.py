"""Celery tasks capped cluster-wide, and singleton tasks, on konductor primitives.

Why: Celery's own ``rate_limit`` and ``concurrency`` are per worker, so "at
most 3 concurrent calls to the payment API across every worker pod" needs a
count that every worker sees. :class:`CoordinatedTask` keeps that count in a
konductor semaphore (and singletons in a mutex per task name and key), so it
holds across processes, pods and machines, and a crashed worker's share comes
back by itself after its TTL.

How it works:

- The gate runs in the worker, around the task body (``Task.__call__``), not
  when the task is sent: a permit is held only while the body runs, and it is
  released in every outcome (return, exception, ``self.retry()``, soft time
  limit). A worker child killed outright stops renewing, and its permit is
  reclaimed by the others after ``ttl``.
- ``on_full="retry"`` (the default) asks for a permit without queueing
  (``try_acquire_semaphore``: no ticket is left behind) and, when none is
  free, sends the same task (same id) back to its queue with a countdown that
  grows with jittered exponential backoff. The worker slot is free meanwhile,
  so other tasks keep running. These re-queues do not use up the task's
  ``max_retries``. ``on_full="wait"`` instead waits in the semaphore's FIFO
  queue for up to ``wait_timeout`` seconds, holding the worker slot, and then
  re-queues like ``"retry"``.
- ``cluster_rate_limit="100/s"`` caps how many bodies *start* per second
  across every worker, in a konductor rate limit: each worker process is one
  member, spending from its local share (no API call per task). With
  ``on_limited="retry"`` (the default) a task that finds no token re-queues
  itself like a full semaphore's, holding no worker slot; ``"wait"`` waits
  for a token in the process, holding the slot. Celery's own ``rate_limit``
  (per worker) is refused on these tasks, so the two are never confused.
- One :class:`konductor.SyncClient` per worker process: created at
  ``worker_process_init`` (prefork children, the solo pool) or on first use
  (the threads pool), closed at ``worker_process_shutdown`` / ``worker_shutdown``.
  Its background thread keeps renewing while the task body runs.

Configuration of the store, first match wins: ``app.conf.konductor_store``
(a zero-argument factory of stores, or a ``KONDUCTOR_STORE``-style string such
as ``"kubernetes"``) and ``app.conf.konductor_namespace``; else
:func:`konductor.configure`; else the environment (``KONDUCTOR_STORE``,
``KONDUCTOR_NAMESPACE``, the pod's service account, ``KUBECONFIG``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

try:
    from celery import Task, current_app, signals  # type: ignore[import-untyped]
    from celery.exceptions import Ignore, Retry  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without celery
    raise ImportError(
        "konductor.integrations.celery needs Celery, which is not installed: "
        "pip install 'konductor[celery]'"
    ) from exc

from konductor import (
    AcquireTimeout,
    ConfigurationError,
    InvalidArgument,
    KonductorError,
    Lock,
    Permit,
    StoreUnavailable,
    SyncClient,
    SyncGrant,
    SyncRateLimiter,
    validate_name,
)
from konductor import _integration as check
from konductor._integration import (
    DEFAULT_TTL,
    Backoff,
    Rate,
    RateLimitRequest,
    configured,
    parse_rate,
    store_from_spec,
)
from konductor.store import Store

__all__ = (
    "NAMESPACE_SETTING",
    "STORE_SETTING",
    "CoordinatedTask",
    "close_clients",
    "default_rate_limit_name",
    "get_client",
)

log = logging.getLogger("konductor.celery")

#: Celery setting naming the store: a factory of stores, or a string like ``"kubernetes"``.
STORE_SETTING = "konductor_store"
#: Celery setting naming the namespace (default: ``KONDUCTOR_NAMESPACE``, the kubeconfig's).
NAMESPACE_SETTING = "konductor_namespace"
#: Message header counting the re-queues of a task that found its gate closed.
REQUEUES_HEADER = "konductor_requeues"

ON_FULL = ("retry", "wait")
ON_LIMITED = ("retry", "wait")
ON_DUPLICATE = ("retry", "drop")


# -- the validated options of one task class ---------------------------------------------


def _whole_task(*args: Any, **kwargs: Any) -> str:
    return ""


@dataclass(frozen=True)
class _Plan:
    semaphore: str | None
    permits: int | None
    ttl: float
    on_full: str
    wait_timeout: float | None
    singleton_key: Callable[..., object] | None
    on_duplicate: str
    requeue_delay: float
    requeue_delay_max: float
    max_requeues: int | None
    semaphore_priority: int = 0
    rate: float | None = None  # cluster_rate_limit, tokens per second
    rate_limit_name: str | None = None  # None: default_rate_limit_name(task name)
    rate_limit_burst: float | None = None
    on_limited: str = "retry"

    @property
    def gated(self) -> bool:
        return self.semaphore is not None or self.singleton_key is not None or self.rate is not None


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        options = " or ".join(repr(a) for a in allowed)
        raise InvalidArgument(f"{what} must be {options}, got {value!r}", argument=what)
    return value


def _rate_options(cls: type[CoordinatedTask]) -> tuple[float | None, str | None, float | None]:
    """The cluster-wide rate limit of a task class: (tokens per second, name, burst).

    Celery's own ``rate_limit`` is refused: it is a per-worker limit that
    Celery enforces by itself, and on a task whose other limits are
    cluster-wide it reads as one (``rate_limit="10/s"`` on 4 workers is 40/s).
    """
    celery_limit = getattr(cls, "rate_limit", None)
    if celery_limit is not None:
        raise InvalidArgument(
            f"rate_limit={celery_limit!r} is Celery's own rate limit, which each worker "
            "enforces separately (4 workers run 4 times that); for one limit across every "
            f"worker use cluster_rate_limit={celery_limit!r}. If you do mean Celery's "
            "per-worker limit, set it through app.conf.task_annotations = "
            f"{{'<task name>': {{'rate_limit': {celery_limit!r}}}}}",
            argument="rate_limit",
        )
    cluster, name, burst = cls.cluster_rate_limit, cls.rate_limit_name, cls.rate_limit_burst
    if cluster is None:
        if "run" in cls.__dict__:  # a task, not a base class that leaves it to subclasses
            for option, value in (("rate_limit_name", name), ("rate_limit_burst", burst)):
                if value is not None:
                    raise InvalidArgument(
                        f"{option}={value!r} was given without cluster_rate_limit=; give the "
                        "rate, e.g. cluster_rate_limit='10/s'",
                        argument=option,
                    )
        return None, None, None
    per_second = parse_rate(cluster, "cluster_rate_limit")
    if name is not None:
        validate_name(name, what="rate_limit_name")
    try:
        request = RateLimitRequest.parse(name or "celery", per_second, burst)
    except InvalidArgument as exc:  # only burst is left to refuse
        raise InvalidArgument(f"rate_limit_burst: {exc}", argument="rate_limit_burst") from None
    return request.rate, name, request.burst


def _plan_of(cls: type[CoordinatedTask]) -> _Plan:
    """Check every option of a task class; raise with the task's name in the message."""
    where = f"task {getattr(cls, 'name', None) or cls.__qualname__}"
    try:
        semaphore = cls.semaphore
        if semaphore is not None:
            validate_name(semaphore, what="semaphore")
        permits = cls.permits
        if permits is not None:
            check.positive_int(permits, "permits")
        if permits is not None and semaphore is None and "run" in cls.__dict__:
            raise InvalidArgument(
                f"permits={permits!r} was given without semaphore=; name the semaphore to "
                "gate on, e.g. semaphore='payments-api'"
            )
        singleton = cls.singleton
        if singleton is True:
            key: Callable[..., object] | None = _whole_task
        elif singleton is False or singleton is None:
            key = None
        elif callable(singleton):
            key = singleton
        else:
            raise InvalidArgument(
                "singleton must be True, False or a function of the task's arguments that "
                f"returns its key, got {singleton!r}"
            )
        delay = check.seconds(cls.requeue_delay, "requeue_delay")
        delay_max = check.seconds(cls.requeue_delay_max, "requeue_delay_max")
        if delay <= 0:
            raise InvalidArgument(f"requeue_delay must be positive, got {delay:g}")
        if delay_max < delay:
            raise InvalidArgument(
                f"requeue_delay_max ({delay_max:g}) must be at least requeue_delay ({delay:g})"
            )
        max_requeues = cls.max_requeues
        if max_requeues is not None and (
            isinstance(max_requeues, bool) or not isinstance(max_requeues, int) or max_requeues < 0
        ):
            raise InvalidArgument(
                f"max_requeues must be None (no limit) or an integer >= 0, got {max_requeues!r}"
            )
        rate, rate_name, burst = _rate_options(cls)
        return _Plan(
            semaphore=semaphore,
            permits=permits,
            ttl=check.ttl(cls.ttl),
            on_full=_choice(cls.on_full, ON_FULL, "on_full"),
            wait_timeout=check.timeout(cls.wait_timeout),
            singleton_key=key,
            on_duplicate=_choice(cls.on_duplicate, ON_DUPLICATE, "on_duplicate"),
            requeue_delay=delay,
            requeue_delay_max=delay_max,
            max_requeues=max_requeues,
            semaphore_priority=check.priority(cls.semaphore_priority),
            rate=rate,
            rate_limit_name=rate_name,
            rate_limit_burst=burst,
            on_limited=_choice(cls.on_limited, ON_LIMITED, "on_limited"),
        )
    except InvalidArgument as exc:
        raise type(exc)(f"{where}: {exc}", argument=exc.argument) from None


def singleton_name(task_name: str, key: object) -> str:
    """The mutex name of a singleton: readable task name + a digest of (task name, key).

    The digest keeps distinct keys (and task names that slug alike) apart and
    the name a valid DNS-1123 subdomain whatever the key contains.
    """
    digest = hashlib.sha256(f"{task_name}\x00{key}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", task_name.lower()).strip("-")[:80].strip("-")
    return f"celery-{slug}-{digest}" if slug else f"celery-{digest}"


def default_rate_limit_name(task_name: str) -> str:
    """The rate limit a task with ``cluster_rate_limit`` and no ``rate_limit_name`` uses.

    Readable task name + a digest of it (``celery-shop-charge-<digest>``): a
    valid DNS-1123 name whatever the task is called, and one limit per task.
    """
    return singleton_name(task_name, "\x00rate-limit")


# -- one client per worker process -------------------------------------------------------

_lock = threading.Lock()
_apps: weakref.WeakSet[Any] = weakref.WeakSet()  # apps with coordinated tasks bound
_clients: weakref.WeakKeyDictionary[Any, SyncClient] = weakref.WeakKeyDictionary()
_clients_pid = os.getpid()


def _build_client(app: Any) -> SyncClient:
    conf = app.conf
    source: object = conf.get(STORE_SETTING)
    namespace: str | None = conf.get(NAMESPACE_SETTING)
    identity: str | None = None
    if source is None:
        settings = configured()
        source = settings.store
        namespace = namespace or settings.namespace
        identity = settings.identity
    elif isinstance(source, str):
        spec, ns = source, namespace

        def from_spec() -> Store:
            return store_from_spec(spec, ns)

        source = from_spec
    elif isinstance(source, Store) or not callable(source):
        raise ConfigurationError(
            f"app.conf.{STORE_SETTING} must be a zero-argument factory of stores (e.g. "
            "lambda: KubernetesStore('jobs')) or a KONDUCTOR_STORE-style string such as "
            f"'kubernetes', got {source!r}: each worker process needs connections of its own"
        )
    return SyncClient(source, namespace=namespace, identity=identity)


def get_client(app: Any = None) -> SyncClient:
    """This process's :class:`SyncClient` for ``app`` (default: the current app).

    Created on first use from the app's configuration (see the module
    docstring); a forked child gets a new one. Use it inside task bodies for
    other primitives (``get_client().mutex(...)``).

    Raises:
        ConfigurationError: ``app.conf.konductor_store`` is not a factory or a
            store string, or (on first use of the client) no store is configured.
    """
    global _clients_pid
    if app is None:
        app = current_app._get_current_object()
    with _lock:
        if _clients_pid != os.getpid():  # a forked child: the parent's clients are not ours
            _clients.clear()
            _memberships.clear()
            _clients_pid = os.getpid()
        client = _clients.get(app)
        if client is None:
            client = _build_client(app)
            _clients[app] = client
        return client


@dataclass
class _Membership:
    guard: contextlib.AbstractContextManager[SyncRateLimiter]
    limiter: SyncRateLimiter


# This process's memberships of rate limits, by (client, limit name): one per
# worker process, joined by its first rate-limited task, left at shutdown.
_memberships: dict[tuple[SyncClient, str], _Membership] = {}
_join_lock = threading.Lock()  # one join at a time; other threads then use it


def _rate_limiter(client: SyncClient, name: str, plan: _Plan) -> SyncRateLimiter:
    """This process's membership of rate limit ``name``, joined (one write) on first use.

    Raises:
        StoreUnavailable / CorruptState / KonductorError: the join failed (the
            next task tries again).
    """
    assert plan.rate is not None
    key = (client, name)
    with _join_lock:
        with _lock:
            held = _memberships.get(key)
        if held is None:
            guard = client.rate_limit(name, plan.rate, burst=plan.rate_limit_burst, ttl=plan.ttl)
            held = _Membership(guard, guard.__enter__())
            with _lock:
                _memberships[key] = held
        return held.limiter


def _on_process_init(**_: Any) -> None:
    # Build each app's client now, so that a configuration error shows at
    # start-up in the worker's log rather than at the first task.
    for app in list(_apps):
        try:
            client = get_client(app)
            client.identity  # noqa: B018 - starts the loop thread and resolves the store
        except Exception:
            log.exception(
                "konductor: could not create the client of Celery app %r; its coordinated "
                "tasks will fail until this is fixed",
                getattr(app, "main", app),
            )


def close_clients() -> None:
    """Close this process's clients: what worker (process) shutdown does.

    For scripts and tests that ran coordinated tasks in-process (direct calls,
    ``apply()``); a later use creates a new client. Never raises.
    """
    _close_process_clients()


def _close_process_clients(**_: Any) -> None:
    with _lock:
        ours = _clients_pid == os.getpid()
        mine = list(_clients.values()) if ours else []
        members = list(_memberships.values()) if ours else []
        _clients.clear()
        _memberships.clear()
    for member in members:  # leave first: the others get its share at their next renewal
        try:
            member.guard.__exit__(None, None, None)
        except Exception:
            log.warning(
                "konductor: leaving rate limit %r failed; its share comes back after its ttl",
                member.limiter.name,
                exc_info=True,
            )
    for client in mine:
        try:
            client.close()
        except Exception:
            log.warning("konductor: closing the Celery worker's client failed", exc_info=True)


signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="konductor-init")
signals.worker_process_shutdown.connect(
    _close_process_clients, weak=False, dispatch_uid="konductor-process-shutdown"
)
signals.worker_shutdown.connect(
    _close_process_clients, weak=False, dispatch_uid="konductor-shutdown"
)


# -- what the running invocation holds ---------------------------------------------------


@dataclass
class _Held:
    task: CoordinatedTask
    permit: SyncGrant[Permit] | None = None
    lock: SyncGrant[Lock] | None = None


_running = threading.local()  # .stack: list[_Held], one per thread (threads pool)


def _stack() -> list[_Held]:
    stack: list[_Held] | None = getattr(_running, "stack", None)
    if stack is None:
        stack = _running.stack = []
    return stack


def _release(client: SyncClient, grant: SyncGrant[Any]) -> BaseException | None:
    """Release ``grant``; return (not raise) an interruption such as a soft time limit.

    The release runs shielded on the client's loop: even when a signal
    interrupts the wait for it here, it still completes.
    """
    try:
        grant.release()  # shielded on the client's loop
    except KonductorError:
        log.warning(
            "konductor: could not release %s; it expires after its ttl",
            grant.grant.describe(),
            exc_info=True,
        )
    except BaseException as exc:
        return exc
    return None


class CoordinatedTask(Task):  # type: ignore[misc]
    """A Celery task gated by a cluster-wide semaphore, rate limit and/or run as a singleton.

    Use as ``@app.task(base=CoordinatedTask, semaphore="payments-api", permits=3)``
    or subclass it and set the options as class attributes. Options:

    ``semaphore``
        Name of the konductor semaphore to hold while the body runs (a
        DNS-1123 name such as ``"payments-api"``); ``None``: no cap.
    ``permits``
        How many may run at once, cluster-wide. Creates the semaphore with it
        if missing; an existing semaphore keeps its own count (edit it with
        ``kubectl edit semaphore``). ``None``: the semaphore must exist.
    ``ttl``
        Seconds after its last renewal that a crashed worker's permit or lock
        comes back (renewed every ttl/3 while the task runs; default 15).
    ``on_full``
        ``"retry"`` (default): re-queue with a jittered, growing countdown, so
        no worker slot is held while waiting. ``"wait"``: wait in the FIFO
        queue for up to ``wait_timeout`` seconds holding the slot, then re-queue.
    ``wait_timeout``
        Seconds ``"wait"`` blocks (``None``: forever). Also bounds the blocking
        waits of direct calls and ``apply()``, which have no queue to go back to.
    ``semaphore_priority``
        The priority of this task's place in the semaphore's queue (-100..100,
        higher first, default 0; aging keeps low priorities from starving).
        It orders waiters that queue: ``on_full="wait"``, direct calls and
        ``apply()``. ``"retry"`` never queues (it re-queues the Celery task),
        so there it has no effect. Not Celery's own ``priority`` (the broker's
        message priority), which it leaves alone.
    ``singleton``
        ``True``: at most one running instance of this task; a function of
        the task's arguments: at most one per key it returns
        (``singleton=lambda order_id, **kw: order_id``).
    ``on_duplicate``
        What a singleton's duplicate does: ``"retry"`` (default: re-queue as
        above) or ``"drop"`` (raise :class:`celery.exceptions.Ignore`: the
        duplicate never runs and no result is stored for it).
    ``requeue_delay``, ``requeue_delay_max``
        The first re-queue countdown and its cap (default 1 s and 30 s); each
        further re-queue doubles the bound, with equal jitter.
    ``max_requeues``
        Re-queues before giving up with :class:`konductor.AcquireTimeout`
        (``None``, the default: never give up).
    ``cluster_rate_limit``
        At most this many task bodies start per second across every worker
        (``"100/s"``, ``"20/m"``, ``"3/h"`` or a number per second), kept in
        a konductor rate limit (docs/rate-limit.md): in any window of T
        seconds at most ``burst + rate * T`` start. Not Celery's own
        ``rate_limit``, a per-worker limit, which is refused on this class.
    ``rate_limit_name``
        The rate limit's name (default: :func:`default_rate_limit_name` of
        the task's name); tasks that name the same limit share it.
    ``rate_limit_burst``
        Tokens the whole fleet may save up (default: one second of the rate);
        at least the number of worker processes, so that each one's bucket
        holds a token.
    ``on_limited``
        ``"retry"`` (default): when this process has no token now, re-queue
        (countdown from the time its share refills a token, growing like
        ``on_full``'s), holding no worker slot. ``"wait"``: wait for a token
        for up to ``wait_timeout`` seconds, holding the slot, then re-queue.

    The rate token is taken first (it costs no API call when none is free),
    then the singleton lock, then the permit: a token taken by a task that
    then finds its gate closed is spent without a call (the limit is
    under-used, never exceeded). Each worker process is one member of the
    rate limit, joined by its first rate-limited task, left at shutdown.

    Re-queues keep the task id, arguments, queue and ``retries`` count (they
    do not use up ``max_retries``) and raise Celery's ``Retry``. When the
    store is unreachable (:class:`konductor.StoreUnavailable` after its own
    retries), the gate cannot be decided and the task is re-queued as well.

    Inside the body (``bind=True``), ``self.permit`` and ``self.singleton_lock``
    are the grants held: ``self.permit.token`` is a fencing token and
    ``self.permit.ensure_held()`` raises if the permit was lost.

    Raises:
        InvalidArgument / InvalidName: at task registration (class creation),
            for a bad option (Celery's ``rate_limit`` included); the message
            names the task and the option.
        SemaphoreLost / MutexLost: the body returned but its grant was lost
            while it ran (not renewed within ``ttl``): the task fails rather
            than report a result that was not protected.
        AcquireTimeout: more than ``max_requeues`` re-queues; or a direct call
            or ``apply()`` waited ``wait_timeout`` in vain.
    """

    semaphore: str | None = None
    permits: int | None = None
    ttl: float = DEFAULT_TTL
    on_full: str = "retry"
    wait_timeout: float | None = 60.0
    singleton: bool | Callable[..., object] = False
    on_duplicate: str = "retry"
    requeue_delay: float = 1.0
    requeue_delay_max: float = 30.0
    max_requeues: int | None = None
    semaphore_priority: int = 0
    cluster_rate_limit: Rate | None = None
    rate_limit_name: str | None = None
    rate_limit_burst: float | None = None
    on_limited: str = "retry"

    _konductor_plan: _Plan

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._konductor_plan = _plan_of(cls)  # bad options fail here, at registration
        # Each task class is bound (and annotated from task_annotations) on its own:
        # Celery's bind() skips the annotations of a class that inherits
        # ``__bound__`` from a base that was bound once (any access to
        # ``CoordinatedTask.app`` binds it), silently dropping a per-worker
        # rate_limit the user set there.
        cls.__bound__ = False

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery's hook when the task class is bound to an app: remember the app."""
        super().on_bound(app)
        if cls._konductor_plan.gated:
            _apps.add(app)

    # -- inside the body ----------------------------------------------------------------

    def _held(self) -> _Held | None:
        stack = _stack()
        return stack[-1] if stack and stack[-1].task is self else None

    @property
    def permit(self) -> SyncGrant[Permit] | None:
        """The permit this invocation holds (in the task body), else ``None``."""
        held = self._held()
        return None if held is None else held.permit

    @property
    def singleton_lock(self) -> SyncGrant[Lock] | None:
        """The singleton mutex this invocation holds (in the task body), else ``None``."""
        held = self._held()
        return None if held is None else held.lock

    # -- the gate -----------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plan = self._konductor_plan
        if not plan.gated:
            return super().__call__(*args, **kwargs)
        request = self.request
        # Called directly or through apply(): there is no queue to go back to, so wait.
        blocking = bool(request.called_directly or request.is_eager)
        client = get_client(self.app)
        held = _Held(self)
        grants: list[SyncGrant[Any]] = []
        lost: list[SyncGrant[Any]] = []
        stack = _stack()
        try:
            try:
                if plan.rate is not None:  # first: it costs no API call when limited
                    self._rate_token(client, plan, blocking)
                if plan.singleton_key is not None:
                    held.lock = self._singleton_lock(client, plan, blocking, args, kwargs)
                    if held.lock is None:  # a dropped duplicate, called directly
                        return None
                    grants.append(held.lock)
                if plan.semaphore is not None:
                    held.permit = self._semaphore_permit(client, plan, blocking)
                    grants.append(held.permit)
            except StoreUnavailable as exc:
                if blocking:
                    raise
                # The API server is unreachable (after the store's own retries):
                # the gate cannot be decided, so come back later, like when full.
                self._requeue(plan, f"the coordination store is unavailable ({exc})")
            stack.append(held)
            try:
                result = super().__call__(*args, **kwargs)
            finally:
                stack.pop()
        finally:
            lost = [g for g in grants if g.is_lost]
            interrupted = [e for g in reversed(grants) if (e := _release(client, g)) is not None]
            for g in lost:
                log.error(
                    "konductor: %s was lost while task %s[%s] ran: %s",
                    g.grant.describe(),
                    self.name,
                    request.id,
                    g.grant.lost_reason,
                )
            if interrupted:
                raise interrupted[0]
        if lost:
            g = lost[0]
            raise g.grant.lost_error(
                f"{g.grant.describe()} was lost while task {self.name}[{request.id}] ran "
                f"({g.grant.lost_reason}); the result is not trusted"
            )
        return result

    def _semaphore_permit(
        self, client: SyncClient, plan: _Plan, blocking: bool
    ) -> SyncGrant[Permit]:
        name = plan.semaphore
        assert name is not None
        permit: SyncGrant[Permit] | None
        if blocking or plan.on_full == "wait":
            try:
                return client.acquire_semaphore(
                    name,
                    plan.permits,
                    ttl=plan.ttl,
                    timeout=plan.wait_timeout,
                    priority=plan.semaphore_priority,
                )
            except AcquireTimeout:
                if blocking:
                    raise
                permit = None
        else:
            permit = client.try_acquire_semaphore(name, plan.permits, ttl=plan.ttl)
        if permit is None:
            self._requeue(plan, f"semaphore {name!r} is full")
        return permit

    def _rate_token(self, client: SyncClient, plan: _Plan, blocking: bool) -> None:
        """Spend one token of the task's cluster-wide rate limit, or re-queue.

        Raises:
            celery.exceptions.Retry: re-queued (no token now under ``"retry"``,
                none within ``wait_timeout`` under ``"wait"``).
            AcquireTimeout: a direct call or ``apply()`` waited ``wait_timeout``
                in vain; or more than ``max_requeues`` re-queues.
        """
        name = plan.rate_limit_name or default_rate_limit_name(self.name)
        limiter = _rate_limiter(client, name, plan)
        first: float | None = None
        if blocking or plan.on_limited == "wait":
            try:
                limiter.acquire(timeout=plan.wait_timeout)
                return
            except AcquireTimeout:
                if blocking:
                    raise
            why = f"no token of rate limit {name!r} within {plan.wait_timeout:g}s"
        else:
            if limiter.try_acquire():
                return
            # The soonest this process's bucket has a token again is 1/share; a
            # member without a share yet gets one within a renewal period.
            share = limiter.share
            first = 1.0 / share if share > 0 else None
            why = (
                f"rate limit {name!r} is spent in this worker process "
                f"(its share {share:.3g}/s of {limiter.rate:g}/s)"
                if share > 0
                else f"rate limit {name!r} has no share for this worker process yet "
                f"(rate {limiter.rate:g}/s; shares move every ttl/3)"
            )
        self._requeue(plan, why, first=first)

    def _singleton_lock(
        self,
        client: SyncClient,
        plan: _Plan,
        blocking: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> SyncGrant[Lock] | None:
        assert plan.singleton_key is not None
        key = plan.singleton_key(*args, **kwargs)
        name = singleton_name(self.name, key)
        if blocking and plan.on_duplicate == "retry":
            return client.acquire_mutex(name, ttl=plan.ttl, timeout=plan.wait_timeout)
        lock = client.try_acquire_mutex(name, ttl=plan.ttl)
        if lock is not None:
            return lock
        why = f"another {self.name} with key {key!r} is running"
        if plan.on_duplicate == "drop":
            log.info("konductor: dropped task %s[%s]: %s", self.name, self.request.id, why)
            if self.request.called_directly:
                return None
            raise Ignore(why)
        self._requeue(plan, why)

    def _requeue(self, plan: _Plan, why: str, *, first: float | None = None) -> NoReturn:
        """Send this task (same id) back to its queue with a countdown; raise Retry.

        The countdown's bound starts at ``first`` (default ``requeue_delay``)
        and doubles with each re-queue up to ``requeue_delay_max``.

        Raises:
            celery.exceptions.Retry: always (the worker records the RETRY state).
            AcquireTimeout: ``max_requeues`` re-queues were already made.
        """
        request = self.request
        headers = dict(request.headers or {})
        done = int(headers.get(REQUEUES_HEADER) or getattr(request, REQUEUES_HEADER, 0) or 0)
        if plan.max_requeues is not None and done >= plan.max_requeues:
            raise AcquireTimeout(
                f"task {self.name}[{request.id}]: {why}, still after {done} re-queues "
                f"(max_requeues={plan.max_requeues})"
            )
        initial = plan.requeue_delay if first is None else first
        delay = Backoff(initial, plan.requeue_delay_max, attempt=done).next_delay()
        headers[REQUEUES_HEADER] = done + 1
        # Same id, args, queue and retries count as this delivery (as Task.retry
        # does, but without counting against max_retries).
        sig = self.signature_from_request(request, countdown=delay, headers=headers)
        sig.apply_async()
        raise Retry(f"{why}; re-queued in {delay:.2f}s", when=delay, sig=sig)


CoordinatedTask._konductor_plan = _plan_of(CoordinatedTask)
