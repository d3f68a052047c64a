"""The seam between konductor's core and whatever observes it: logs, metrics, traces, Events.

The core calls the small hook functions below at each transition that
matters to an operator (an acquire starts, queues, ends; a grant is made,
released or lost; a renewal succeeds or fails; an API request is answered; a
watch is reopened). Each hook builds nothing and imports nothing: it hands the
transition to every installed :class:`Observer`. The observers live in their
own modules (:mod:`konductor.metrics` with prometheus_client,
:mod:`konductor.tracing` with the OpenTelemetry API, :mod:`konductor._kube._events`
for Kubernetes Events) and are installed only when asked for, so a process
that asks for none pays one loop over one logging observer per transition,
and ``import konductor`` imports no optional dependency.

Observers must not raise (an exception is logged and swallowed: observation
never changes what the core does) and must not block: anything that does I/O
(an Event) runs in a task of its own.

Loggers: ``konductor`` (outages, retries, misconfiguration: WARNING and
above; DEBUG for per-request detail) and ``konductor.transitions`` (one INFO
line per important transition: granted after waiting, released, lost,
takeover, leadership; nothing per renewal above DEBUG). Each transition line
carries structured fields in the record's ``extra``: ``konductor_event``,
``konductor_primitive``, ``konductor_name``, ``konductor_namespace``,
``konductor_token``, ``konductor_wait_seconds``, ``konductor_hold_seconds``,
``konductor_reason``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from konductor._engine._clock import Clock
    from konductor._engine._grant import Grant
    from konductor._engine._hub import Hub
    from konductor._engine._renewal import Entry
    from konductor._store._base import Store
    from konductor._store._kinds import Kind

log = logging.getLogger("konductor")
transitions = logging.getLogger("konductor.transitions")

P = ParamSpec("P")
R = TypeVar("R")

#: Why a grant was lost, as the ``reason`` label of ``konductor_lost_total``.
RENEWAL_DEADLINE = "renewal_deadline"  # not renewed before the holder's own deadline
REMOVED_BY_OTHER = "removed_by_other"  # another client judged it expired and removed it
DELETED = "deleted"  # the object itself was deleted
PREFERRED_HOLDER = "preferred_holder"  # a Lease's spec.preferredHolder named someone else
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Site:
    """What is coordinated: one object of one primitive kind in one namespace."""

    primitive: str  # "semaphore", "mutex", "rwmutex", "lease", "once", "barrier", ...
    name: str
    namespace: str
    store: Store | None = field(default=None, compare=False, hash=False, repr=False)
    kind: Kind | None = field(default=None, compare=False, hash=False, repr=False)
    uid: str = field(default="", compare=False, hash=False, repr=False)


@dataclass(eq=False, slots=True)
class Attempt:
    """One acquire call, from its start to its outcome."""

    site: Site
    count: int
    blocking: bool
    started: float  # on the client's clock
    position: int | None = None  # 1-based queue position when it queued
    token: int | None = None
    result: str = ""  # "granted", "busy", "timeout", "cancelled", "error"
    wait: float = 0.0  # seconds from the call to its outcome
    error: BaseException | None = None
    #: The observers installed when it started (only they are told how it ends).
    observers: tuple[Observer, ...] = ()
    #: Per-observer state (a span, ...), keyed by the observer.
    baggage: dict[Observer, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Hold:
    """One grant, from when it was made until it is released or lost."""

    site: Site
    token: int
    count: int
    started: float  # on the client's clock
    clock: Clock
    held: float = 0.0  # seconds, set when it ends
    reason: str | None = None  # the lost reason (one of the constants above), or None
    message: str = ""  # the lost message
    observers: tuple[Observer, ...] = ()
    baggage: dict[Observer, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Operation:
    """A once run or a barrier wait, from start to end."""

    site: Site
    what: str  # "run" (once), "wait" (barrier)
    started: float
    error: BaseException | None = None
    observers: tuple[Observer, ...] = ()
    baggage: dict[Observer, Any] = field(default_factory=dict)


class Observer:
    """Receives transitions. Every method is a no-op here; override what you need."""

    def acquire_started(self, att: Attempt) -> None: ...
    def acquire_queued(self, att: Attempt) -> None: ...
    def acquire_ended(self, att: Attempt) -> None: ...
    def granted(self, hold: Hold) -> None: ...
    def hold_ended(self, hold: Hold) -> None: ...
    def renewed(self, site: Site, ok: bool) -> None: ...
    def takeover(self, site: Site, expired: int) -> None: ...
    def leadership(self, site: Site, leading: bool) -> None: ...
    def watch_reconnected(self, site: Site, why: str) -> None: ...
    def api_request(self, verb: str, primitive: str, outcome: str) -> None: ...
    def api_retry(self, verb: str, primitive: str) -> None: ...
    def operation_started(self, op: Operation) -> None: ...
    def operation_ended(self, op: Operation) -> None: ...


_observers: list[Observer] = []
_held: dict[Entry, Hold] = {}
_current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "konductor_attempt", default=None
)
#: Request ids whose deciding write reclaimed expired holders (bounded; see reclaimed()).
_reclaims: OrderedDict[str, int] = OrderedDict()
_MAX_RECLAIMS = 1024


def install(observer: Observer) -> None:
    """Start sending transitions to ``observer`` (idempotent)."""
    if observer not in _observers:
        _observers.append(observer)


def uninstall(observer: Observer) -> None:
    """Stop sending transitions to ``observer`` (idempotent)."""
    if observer in _observers:
        _observers.remove(observer)


def _each(call: Callable[[Observer], None], among: tuple[Observer, ...] | None = None) -> None:
    """Call every installed observer (of ``among`` only, when given: those that saw
    the start of what now ends, so that a gauge is never decremented unincremented)."""
    for observer in tuple(_observers):
        if among is not None and observer not in among:
            continue
        try:
            call(observer)
        except Exception:
            log.exception("konductor observer %r failed", observer)


def site_of(hub: Hub) -> Site:
    uid = hub.obj.uid if hub.obj is not None else ""
    return Site(_primitive(hub.kind), hub.name, hub.store.namespace, hub.store, hub.kind, uid)


def _primitive(kind: Kind) -> str:
    return kind.kind.lower()


# -- hooks the core calls ---------------------------------------------------------------


class _HasHub(Protocol):
    @property
    def hub(self) -> Hub: ...


def acquisition(
    fn: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorate an engine's ``acquire(self, timeout, *, blocking=True)``: report start and end.

    The engine has a ``hub``; its ``count`` (permits asked for) is read if it has one.
    The result is a grant (``granted``) or ``None`` (a non-blocking try: ``busy``).
    """

    @functools.wraps(fn)
    async def acquire(self: _HasHub, *args: Any, **kwargs: Any) -> R:
        if not _observers:
            return await fn(self, *args, **kwargs)
        clock = self.hub.clock  # the client's clock (a FakeClock in tests)
        att = Attempt(
            site_of(self.hub),
            int(getattr(self, "count", 1)),
            bool(kwargs.get("blocking", True)),
            clock.monotonic(),
        )
        att.observers = tuple(_observers)
        _each(lambda o: o.acquire_started(att))
        reset = _current.set(att)
        try:
            result = await fn(self, *args, **kwargs)
        except BaseException as exc:
            from konductor._errors import AcquireTimeout

            att.error = exc
            if isinstance(exc, AcquireTimeout):
                att.result = "timeout"
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                att.result = "cancelled"
            else:
                att.result = "error"
            raise
        else:
            token = getattr(result, "token", None)
            att.result = "granted" if result is not None else "busy"
            att.token = token if isinstance(token, int) else None
            return result
        finally:
            _current.reset(reset)
            att.wait = clock.monotonic() - att.started
            _each(lambda o: o.acquire_ended(att), att.observers)

    return acquire


def queued(status: Mapping[str, Any], req_id: str) -> None:
    """The current acquire's ticket ``req_id`` is in ``status['queue']``: note its position."""
    att = _current.get()
    if att is None or att.position is not None or not _observers:
        return
    queue = status.get("queue")
    if not isinstance(queue, list):
        return
    for i, entry in enumerate(queue):
        if isinstance(entry, dict) and entry.get("id") == req_id:
            att.position = i + 1
            _each(lambda o: o.acquire_queued(att), att.observers)
            return


def reclaimed(req_id: str, stale: set[str], status: Mapping[str, Any]) -> None:
    """A decision for request ``req_id`` saw the ``stale`` (expired) entries of ``status``.

    If the request is then granted, it took over from that many expired holders
    (reported by :func:`granted`). Remembered for a bounded number of requests.
    """
    if not stale or not _observers:
        return
    holders = status.get("holders")
    if not isinstance(holders, list):
        return
    took_over(req_id, sum(1 for h in holders if isinstance(h, dict) and h.get("id") in stale))


def took_over(grant_id: str, expired: int) -> None:
    """If the grant ``grant_id`` is made by the write being decided, it replaces
    ``expired`` expired holders (reported by :func:`granted`)."""
    if expired and _observers:
        _reclaims[grant_id] = int(expired)
        _reclaims.move_to_end(grant_id)
        while len(_reclaims) > _MAX_RECLAIMS:
            _reclaims.popitem(last=False)


def granted(grant: Grant) -> None:
    """``grant`` was just made (called by every grant's constructor)."""
    if not _observers:
        return
    entry = grant._entry
    site = site_of(entry.hub)
    clock = entry.hub.clock
    hold = Hold(site, grant.token, int(getattr(grant, "count", 1)), clock.monotonic(), clock)
    hold.observers = tuple(_observers)
    _held[entry] = hold
    expired = _reclaims.pop(grant.id, 0)
    _each(lambda o: o.granted(hold))
    if expired:
        _each(lambda o: o.takeover(site, expired))
    if site.primitive == "lease":
        _each(lambda o: o.leadership(site, True))


def released(grant: Grant) -> None:
    """``grant`` is being released by its holder (lost first, if it was lost)."""
    entry = grant._entry
    if entry.lost_reason is not None:
        lost(entry, OTHER)
    _end(entry, None, "")


def lost(entry: Entry, reason: str) -> None:
    """``entry`` is about to be marked lost for ``reason`` (a constant above).

    Call it just before ``entry.mark_lost``: the loss is reported when it is
    marked, with its message; an entry already lost is not counted twice.
    """
    if entry in _held:
        if entry.lost_reason is None:
            entry.on_lost.append(functools.partial(_on_lost, entry, reason))
        elif reason == OTHER:  # lost without a hook: report it now
            _end(entry, reason, entry.lost_reason)


def _on_lost(entry: Entry, reason: str, message: str) -> None:
    _end(entry, reason, message)


def _end(entry: Entry, reason: str | None, message: str) -> None:
    hold = _held.pop(entry, None)
    if hold is None:
        return
    hold.held = hold.clock.monotonic() - hold.started
    hold.reason = reason
    hold.message = message
    _each(lambda o: o.hold_ended(hold), hold.observers)
    if hold.site.primitive == "lease":
        _each(lambda o: o.leadership(hold.site, False), hold.observers)


def renewed(hub: Hub, ok: bool) -> None:
    """One renewal write of ``hub``'s object succeeded (``ok``) or failed."""
    if _observers:
        site = site_of(hub)
        _each(lambda o: o.renewed(site, ok))


def watch_reconnected(hub: Hub, why: str) -> None:
    """``hub`` reopens its watch: ``"error"`` (it failed) or ``"silent"`` (presumed dead)."""
    if _observers:
        site = site_of(hub)
        _each(lambda o: o.watch_reconnected(site, why))


_watch_site: contextvars.ContextVar[Site | None] = contextvars.ContextVar(
    "konductor_watch_site", default=None
)


def watching(hub: Hub) -> None:
    """The current task is ``hub``'s watch task: its watch's resumptions are ``hub``'s."""
    _watch_site.set(site_of(hub))


def watch_resumed(why: str) -> None:
    """The current task's watch resumes after ``why`` (``"error"``, ``"expired"``)."""
    site = _watch_site.get()
    if site is not None and _observers:
        _each(lambda o: o.watch_reconnected(site, why))


def api_response(verb: str, kind: str, status: int) -> None:
    """An API request was answered with HTTP ``status``."""
    if _observers:
        outcome = _outcome(verb, status)
        _each(lambda o: o.api_request(verb, kind.lower(), outcome))


def api_unavailable(verb: str, kind: str) -> None:
    """An API request got no answer (network error or timeout)."""
    if _observers:
        _each(lambda o: o.api_request(verb, kind.lower(), "unavailable"))


def api_retry(verb: str, kind: str) -> None:
    """An API request is about to be sent again after a retryable failure."""
    if _observers:
        _each(lambda o: o.api_retry(verb, kind.lower()))


def _outcome(verb: str, status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status == 409:
        return "already_exists" if verb == "create" else "conflict"
    if status == 422 and verb == "patch":
        # A guarded patch whose test failed (the object changed in a way the
        # write relied on): konductor's conflict; its patches are otherwise valid.
        return "conflict"
    return {
        404: "not_found",
        403: "forbidden",
        401: "unauthorized",
        410: "expired",
        422: "invalid",
        429: "throttled",
    }.get(status, "server_error" if status >= 500 else "error")


def operation(what: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a method of an object with a ``hub``: report it as a once run or barrier wait."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _observers:
                return await fn(*args, **kwargs)
            owner: _HasHub = args[0]  # type: ignore[assignment]
            op = Operation(site_of(owner.hub), what, owner.hub.clock.monotonic())
            op.observers = tuple(_observers)
            _each(lambda o: o.operation_started(op))
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                op.error = exc
                raise
            finally:
                _each(lambda o: o.operation_ended(op), op.observers)

        return run

    return decorate


# -- the logging observer (always installed) --------------------------------------------


class LogObserver(Observer):
    """One INFO line on ``konductor.transitions`` per important transition."""

    def _extra(self, event: str, site: Site, **fields: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "konductor_event": event,
            "konductor_primitive": site.primitive,
            "konductor_name": site.name,
            "konductor_namespace": site.namespace,
        }
        extra.update({f"konductor_{k}": v for k, v in fields.items()})
        return extra

    def acquire_ended(self, att: Attempt) -> None:
        if att.result != "granted" or not transitions.isEnabledFor(logging.INFO):
            return
        if att.position is None and att.wait < 1.0:
            # Granted at once: a line per uncontended grant would be noise.
            transitions.debug(
                "granted %s %r (token %s) at once",
                att.site.primitive,
                att.site.name,
                att.token,
                extra=self._extra("granted", att.site, token=att.token, wait_seconds=att.wait),
            )
            return
        transitions.info(
            "granted %s %r (token %s) after waiting %.3fs (queued at position %s)",
            att.site.primitive,
            att.site.name,
            att.token,
            att.wait,
            att.position,
            extra=self._extra("granted", att.site, token=att.token, wait_seconds=att.wait),
        )

    def hold_ended(self, hold: Hold) -> None:
        if hold.reason is None:
            transitions.info(
                "released %s %r (token %d) after holding it %.3fs",
                hold.site.primitive,
                hold.site.name,
                hold.token,
                hold.held,
                extra=self._extra("released", hold.site, token=hold.token, hold_seconds=hold.held),
            )
        else:
            transitions.warning(
                "lost %s %r (token %d) after holding it %.3fs: %s",
                hold.site.primitive,
                hold.site.name,
                hold.token,
                hold.held,
                hold.message,
                extra=self._extra(
                    "lost", hold.site, token=hold.token, hold_seconds=hold.held, reason=hold.reason
                ),
            )

    def takeover(self, site: Site, expired: int) -> None:
        transitions.info(
            "took over %s %r from %d expired holder(s)",
            site.primitive,
            site.name,
            expired,
            extra=self._extra("takeover", site, expired=expired),
        )

    def renewed(self, site: Site, ok: bool) -> None:
        if ok:
            transitions.debug(
                "renewed %s %r", site.primitive, site.name, extra=self._extra("renewed", site)
            )


install(LogObserver())
