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
    validate_name,
)
from konductor import _integration as check
from konductor._integration import DEFAULT_TTL, Backoff, configured, store_from_spec
from konductor.store import Store

__all__ = ("NAMESPACE_SETTING", "STORE_SETTING", "CoordinatedTask", "close_clients", "get_client")

log = logging.getLogger("konductor.celery")

#: Celery setting naming the store: a factory of stores, or a string like ``"kubernetes"``.
STORE_SETTING = "konductor_store"
#: Celery setting naming the namespace (default: ``KONDUCTOR_NAMESPACE``, the kubeconfig's).
NAMESPACE_SETTING = "konductor_namespace"
#: Message header counting the re-queues of a task that found its gate closed.
REQUEUES_HEADER = "konductor_requeues"

ON_FULL = ("retry", "wait")
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

    @property
    def gated(self) -> bool:
        return self.semaphore is not None or self.singleton_key is not None


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        options = " or ".join(repr(a) for a in allowed)
        raise InvalidArgument(f"{what} must be {options}, got {value!r}", argument=what)
    return value


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
            _clients_pid = os.getpid()
        client = _clients.get(app)
        if client is None:
            client = _build_client(app)
            _clients[app] = client
        return client


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
        mine = list(_clients.values()) if _clients_pid == os.getpid() else []
        _clients.clear()
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
    """A Celery task gated by a cluster-wide semaphore and/or run as a singleton.

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

    Re-queues keep the task id, arguments, queue and ``retries`` count (they
    do not use up ``max_retries``) and raise Celery's ``Retry``. When the
    store is unreachable (:class:`konductor.StoreUnavailable` after its own
    retries), the gate cannot be decided and the task is re-queued as well.

    Inside the body (``bind=True``), ``self.permit`` and ``self.singleton_lock``
    are the grants held: ``self.permit.token`` is a fencing token and
    ``self.permit.ensure_held()`` raises if the permit was lost.

    Raises:
        InvalidArgument / InvalidName: at task registration (class creation),
            for a bad option; the message names the task and the option.
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

    _konductor_plan: _Plan

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._konductor_plan = _plan_of(cls)  # bad options fail here, at registration

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

    def _requeue(self, plan: _Plan, why: str) -> NoReturn:
        """Send this task (same id) back to its queue with a countdown; raise Retry.

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
        delay = Backoff(plan.requeue_delay, plan.requeue_delay_max, attempt=done).next_delay()
        headers[REQUEUES_HEADER] = done + 1
        # Same id, args, queue and retries count as this delivery (as Task.retry
        # does, but without counting against max_retries).
        sig = self.signature_from_request(request, countdown=delay, headers=headers)
        sig.apply_async()
        raise Retry(f"{why}; re-queued in {delay:.2f}s", when=delay, sig=sig)


CoordinatedTask._konductor_plan = _plan_of(CoordinatedTask)
