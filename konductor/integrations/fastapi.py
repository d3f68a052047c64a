"""Ordered start-up and one leader among the replicas of a FastAPI (or Starlette) app.

Why: replicas of a web app started together by a Deployment race each other.
They must wait until their dependencies are ready, run the database
migration once (not once per replica), start serving together, and keep
exactly one replica running the background jobs (a scheduler, a compactor).
:func:`konductor_lifespan` does all of it in the app's **lifespan**, the one
place Starlette runs code before the first request and after the last:

1. wait for **gates** (``client.wait_gate``), e.g. "PostgreSQL is ready";
2. run **once** initialisers (``client.once``) exactly once cluster-wide, in
   the order given; replicas that did not run one wait until it is done;
3. enter the app's own lifespan (``inner=``), if any;
4. arrive at a **barrier** and wait until every replica has;
5. **campaign** for a leader Lease in the background; while this replica
   leads, its leader coroutine runs; it is cancelled when leadership is lost
   and started again when this replica is elected again.

The state (:class:`KonductorState`: is leader, fencing token, barrier info,
...) is handed to Starlette as lifespan state, so handlers read it as
``request.state.konductor`` at no cost: it is kept in memory and updated by
the campaign as leadership changes. There is deliberately **no per-request
middleware**: every konductor decision is a Kubernetes API write (10-50 ms,
and load on the control plane), which has no place on a request path.

Shutdown (SIGTERM to uvicorn runs the lifespan's exit) stops the leader
coroutine and releases the Lease first, so a waiting replica takes over at
once, then leaves the app's own lifespan and closes the client, which releases
anything else still held. A start-up wait that runs out of ``startup_timeout``
raises :class:`StartupTimeout`; Starlette reports the start-up as failed and
uvicorn exits with a non-zero status, the message naming what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without fastapi
    raise ImportError(
        "konductor.integrations.fastapi needs FastAPI, which is not installed: "
        "pip install 'konductor[fastapi]'"
    ) from exc

from konductor import (
    BarrierInfo,
    Client,
    GateCondition,
    GateInfo,
    InvalidArgument,
    Lease,
    WaitTimeout,
    validate_name,
)
from konductor import _integration as check
from konductor._integration import DEFAULT_TTL, Backoff, Duration, parse_conditions

__all__ = (
    "DEFAULT_STARTUP_TIMEOUT",
    "BarrierConfig",
    "GateConfig",
    "KonductorLifespan",
    "KonductorState",
    "KonductorStateDep",
    "LeaderConfig",
    "StartupTimeout",
    "get_konductor_state",
    "konductor_lifespan",
)

log = logging.getLogger("konductor.fastapi")

#: Default bound, in seconds, on the time start-up spends waiting for others.
DEFAULT_STARTUP_TIMEOUT = 300.0
#: Key of the lifespan state (so ``request.state.konductor``), unless ``state_key`` says otherwise.
STATE_KEY = "konductor"

InnerLifespan = Callable[[Any], Any]
"""The app's own lifespan: ``app -> async context manager`` (what ``FastAPI(lifespan=)`` takes),
or an async generator function taking the app."""


class StartupTimeout(WaitTimeout):
    """A start-up wait ran out of ``startup_timeout``.

    It waited for a gate, another replica's initialiser or the barrier.
    Raised from the lifespan's start-up, so Starlette reports the start-up as
    failed and uvicorn exits with a non-zero status. The message names what
    it waited for and what that still lacked. Nothing was left held; a
    barrier arrival stays recorded (arrivals are never withdrawn).
    ``waiting_for`` says what it waited for, e.g. ``"gate 'db-ready'"``.
    """

    waiting_for: str = ""


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    """A gate to wait for before anything else, optionally created with ``conditions``.

    ``conditions`` (:class:`konductor.GateCondition` or ``{"type", "name"}``
    mappings) are written only if the gate does not exist yet; without them
    the gate opens only through ``open_gate`` (e.g. from a deploy script or
    ``kubectl``).
    """

    name: str
    conditions: Sequence[GateCondition | Mapping[str, str]] | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, what="gate name")
        if self.conditions is not None:
            object.__setattr__(self, "conditions", parse_conditions(self.conditions))


@dataclass(frozen=True)
class BarrierConfig:
    """The start-up barrier: wait until ``expected`` replicas have arrived.

    ``expected`` creates the barrier if it is missing (the cluster's value wins
    if it exists). ``party`` names this replica (default: the client's
    identity, new for every process). A barrier stays open once open, so a
    replica started later passes at once; use a name per release (e.g.
    ``f"app-start-{VERSION}"``) to make each rollout meet again.
    """

    name: str
    expected: int
    party: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, what="barrier name")
        check.positive_int(self.expected, "barrier expected")
        if self.party is not None and (not isinstance(self.party, str) or not self.party):
            raise InvalidArgument(f"barrier party must be a non-empty string, got {self.party!r}")


@dataclass(frozen=True)
class LeaderConfig:
    """Campaign for Lease ``name``; run ``await run(lease)`` while this replica leads.

    ``ttl`` is the Lease's ``leaseDurationSeconds`` (rounded up to whole
    seconds): a replica that dies without releasing is replaced about ``ttl``
    seconds after its last renewal. ``run`` is optional (without it the
    replica only holds the role, visible as ``state.is_leader``). It is
    cancelled when leadership is lost and started again on re-election. If it
    returns, the replica keeps leading until shutdown or loss; if it raises,
    the error is logged (and kept in ``state.leader_error``), leadership is
    given up, and the replica campaigns again after a back-off of
    ``restart_delay`` seconds, doubling up to 30 s.
    """

    name: str
    run: Callable[[Lease], Awaitable[object]] | None = None
    ttl: float = DEFAULT_TTL
    restart_delay: float = 1.0

    def __post_init__(self) -> None:
        validate_name(self.name, what="leader lease name")
        object.__setattr__(self, "ttl", check.ttl(self.ttl))
        if self.run is not None and not callable(self.run):
            raise InvalidArgument(
                f"leader run must be an async callable taking the Lease, got {self.run!r}"
            )
        delay = check.seconds(self.restart_delay, "restart_delay")
        if delay <= 0:
            raise InvalidArgument(f"restart_delay must be positive, got {delay:g}")
        object.__setattr__(self, "restart_delay", delay)


def _gate(value: str | GateConfig) -> GateConfig:
    if isinstance(value, GateConfig):
        return value
    if isinstance(value, str):
        return GateConfig(value)
    raise InvalidArgument(
        f"a gate is a name or a GateConfig(name, conditions=[...]), got {value!r}"
    )


def _barrier(value: tuple[str, int] | BarrierConfig | None) -> BarrierConfig | None:
    if value is None or isinstance(value, BarrierConfig):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return BarrierConfig(*value)
    raise InvalidArgument(
        f"barrier is (name, expected) or BarrierConfig(name, expected, party=...), got {value!r}"
    )


def _leader(value: str | LeaderConfig | None) -> LeaderConfig | None:
    if value is None or isinstance(value, LeaderConfig):
        return value
    if isinstance(value, str):
        return LeaderConfig(value)
    raise InvalidArgument(f"leader is a lease name or a LeaderConfig(name, ...), got {value!r}")


def _once(
    value: Mapping[str, Callable[[], Awaitable[object]]],
) -> dict[str, Callable[[], Awaitable[object]]]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"once is a mapping of name -> async callable, e.g. {{'migrations': migrate}}, "
            f"got {value!r}"
        )
    out: dict[str, Callable[[], Awaitable[object]]] = {}
    for name, fn in value.items():
        validate_name(name, what="once name")
        if not callable(fn):
            raise InvalidArgument(
                f"once {name!r}: the initialiser must be an async callable taking no "
                f"arguments, got {fn!r}"
            )
        out[name] = fn
    return out


def _inner(value: InnerLifespan | None) -> Callable[[Any], AbstractAsyncContextManager[Any]] | None:
    if value is None:
        return None
    if inspect.isasyncgenfunction(value):
        return asynccontextmanager(value)
    if inspect.isgeneratorfunction(value) or not callable(value):
        raise InvalidArgument(
            "inner must be the app's lifespan: an @asynccontextmanager function taking the "
            f"app (what FastAPI(lifespan=...) takes), got {value!r}"
        )
    fn: Callable[[Any], AbstractAsyncContextManager[Any]] = value
    return fn


def _client_factory(
    value: Client | Callable[[], Client] | None,
) -> tuple[Callable[[], Client], bool]:
    """(factory, whether the lifespan owns, and so closes, the client)."""
    if value is None:
        return Client, True
    if isinstance(value, Client):
        given = value
        return (lambda: given), False
    if callable(value):
        return value, True
    raise InvalidArgument(
        f"client is a konductor.Client or a zero-argument factory of one, got {value!r}"
    )


# -- state --------------------------------------------------------------------------------


@dataclass(eq=False)
class KonductorState:
    """What konductor knows about this replica, for handlers (``request.state.konductor``).

    Reading it costs nothing: it lives in memory. ``is_leader`` and
    ``fencing_token`` change while the app runs (the campaign updates them the
    moment leadership is won or lost); the rest is fixed once start-up is done.
    """

    identity: str
    client: Client = field(repr=False)
    phase: str = "starting"
    ready: bool = False
    gates: dict[str, GateInfo] = field(default_factory=dict)
    once_ran: dict[str, bool] = field(default_factory=dict)
    """name -> True if this replica ran the initialiser, False if another one had."""
    barrier: BarrierInfo | None = None
    leader_name: str | None = None
    elections: int = 0
    """How many times this replica has been elected leader."""
    leader_error: str | None = None
    """The last error raised by the leader coroutine, if any."""
    startup_seconds: float | None = None
    _lease: Lease | None = field(default=None, init=False, repr=False)

    @property
    def lease(self) -> Lease | None:
        """The Lease while this replica leads, else ``None``."""
        lease = self._lease
        return lease if lease is not None and not lease.is_lost and not lease.released else None

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the leader Lease right now."""
        return self.lease is not None

    @property
    def fencing_token(self) -> int | None:
        """The Lease's ``leaseTransitions`` while this replica leads (pass it downstream)."""
        lease = self.lease
        return None if lease is None else lease.token

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, e.g. for a status endpoint."""
        barrier = self.barrier
        return {
            "identity": self.identity,
            "phase": self.phase,
            "ready": self.ready,
            "startup_seconds": self.startup_seconds,
            "gates": {name: {"open": info.open} for name, info in self.gates.items()},
            "once": {name: {"ran_here": ran} for name, ran in self.once_ran.items()},
            "barrier": None
            if barrier is None
            else {
                "name": barrier.name,
                "expected": barrier.expected,
                "arrived_count": barrier.arrived_count,
                "open": barrier.open,
                "arrived": list(barrier.arrived),
            },
            "leader": None
            if self.leader_name is None
            else {
                "name": self.leader_name,
                "is_leader": self.is_leader,
                "fencing_token": self.fencing_token,
                "elections": self.elections,
                "error": self.leader_error,
            },
        }


def get_konductor_state(conn: HTTPConnection) -> KonductorState:
    """FastAPI dependency: the :class:`KonductorState` of this replica.

    Raises:
        RuntimeError: the app was not started with :func:`konductor_lifespan`
            (under the default ``state_key``).
    """
    state = getattr(conn.state, STATE_KEY, None)
    if not isinstance(state, KonductorState):
        raise RuntimeError(
            f"request.state.{STATE_KEY} is not set: start the app with "
            "FastAPI(lifespan=konductor_lifespan(...))"
        )
    return state


KonductorStateDep = Annotated[KonductorState, Depends(get_konductor_state)]
"""``def handler(k: KonductorStateDep)``: the replica's state as a FastAPI dependency."""


# -- the lifespan -------------------------------------------------------------------------


class _Budget:
    """The start-up wait budget: only time spent waiting for others counts."""

    def __init__(self, total: float | None) -> None:
        self.total = total
        self.spent = 0.0

    def left(self) -> float | None:
        return None if self.total is None else max(0.0, self.total - self.spent)


class KonductorLifespan:
    """The lifespan built by :func:`konductor_lifespan`; pass it as ``FastAPI(lifespan=...)``.

    Calling it with the app returns an async context manager (Starlette's
    lifespan protocol) that yields the lifespan state
    ``{state_key: KonductorState, **the inner lifespan's state}``.
    """

    def __init__(
        self,
        *,
        gates: Iterable[str | GateConfig] = (),
        once: Mapping[str, Callable[[], Awaitable[object]]] | None = None,
        barrier: tuple[str, int] | BarrierConfig | None = None,
        leader: str | LeaderConfig | None = None,
        startup_timeout: Duration | None = DEFAULT_STARTUP_TIMEOUT,
        once_ttl: Duration = DEFAULT_TTL,
        inner: InnerLifespan | None = None,
        client: Client | Callable[[], Client] | None = None,
        state_key: str = STATE_KEY,
    ) -> None:
        if isinstance(gates, str | bytes):
            raise InvalidArgument(f"gates is a list of gate names, got {gates!r}; e.g. [{gates!r}]")
        self.gates: tuple[GateConfig, ...] = tuple(_gate(g) for g in gates)
        self.once = _once({} if once is None else once)
        self.barrier = _barrier(barrier)
        self.leader = _leader(leader)
        self.startup_timeout = check.timeout(startup_timeout)
        self.once_ttl = check.ttl(once_ttl)
        self.inner = _inner(inner)
        self._client, self._owns_client = _client_factory(client)
        if not isinstance(state_key, str) or not state_key.isidentifier():
            raise InvalidArgument(f"state_key must be a Python identifier, got {state_key!r}")
        self.state_key = state_key

    def __call__(self, app: Any) -> AbstractAsyncContextManager[dict[str, Any]]:
        return self._run(app)

    # -- start-up steps ---------------------------------------------------------------

    def _timed_out(self, exc: WaitTimeout, state: KonductorState, what: str) -> StartupTimeout:
        limit = "no limit" if self.startup_timeout is None else f"{self.startup_timeout:g}s"
        error = StartupTimeout(
            f"konductor start-up of {state.identity} timed out: {exc} (startup_timeout={limit} "
            "bounds the time start-up waits for gates, other replicas' initialisers and the "
            "barrier)"
        )
        error.waiting_for = what
        return error

    async def _wait_gates(self, client: Client, state: KonductorState, budget: _Budget) -> None:
        for gate in self.gates:
            state.phase = f"waiting for gate {gate.name!r}"
            started = time.monotonic()
            try:
                info = await client.wait_gate(
                    gate.name, conditions=gate.conditions, timeout=budget.left()
                )
            except WaitTimeout as exc:
                raise self._timed_out(exc, state, f"gate {gate.name!r}") from exc
            finally:
                budget.spent += time.monotonic() - started
            state.gates[gate.name] = info
            log.info("konductor: gate %r is open", gate.name)

    async def _run_once(self, client: Client, state: KonductorState, budget: _Budget) -> None:
        for name, fn in self.once.items():
            state.phase = f"initialiser {name!r}"
            ran_for = 0.0
            ran = False

            async def run(fn: Callable[[], Awaitable[object]] = fn, name: str = name) -> object:
                nonlocal ran_for, ran
                ran = True
                began = time.monotonic()
                try:
                    result = fn()
                    if not inspect.isawaitable(result):
                        raise InvalidArgument(
                            f"once {name!r}: the initialiser returned {result!r}, not an "
                            "awaitable; it must be an async callable taking no arguments"
                        )
                    log.info("konductor: running initialiser %r (once cluster-wide)", name)
                    return await result
                finally:
                    ran_for = time.monotonic() - began

            started = time.monotonic()
            try:
                await client.once(name, run, ttl=self.once_ttl, timeout=budget.left())
            except WaitTimeout as exc:
                raise self._timed_out(exc, state, f"initialiser {name!r}") from exc
            finally:
                # Only waiting for another replica's run counts; our own run never
                # times out (a migration cut short by a timer is worse than a slow start).
                budget.spent += max(0.0, time.monotonic() - started - ran_for)
            state.once_ran[name] = ran
            log.info(
                "konductor: initialiser %r %s",
                name,
                "ran here" if ran else "was run by another replica",
            )

    async def _pass_barrier(self, client: Client, state: KonductorState, budget: _Budget) -> None:
        barrier = self.barrier
        if barrier is None:
            return
        state.phase = f"waiting at barrier {barrier.name!r}"
        started = time.monotonic()
        try:
            state.barrier = await client.arrive_and_wait(
                barrier.name, barrier.expected, party=barrier.party, timeout=budget.left()
            )
        except WaitTimeout as exc:
            raise self._timed_out(exc, state, f"barrier {barrier.name!r}") from exc
        finally:
            budget.spent += time.monotonic() - started
        log.info(
            "konductor: passed barrier %r (%d of %d arrived)",
            barrier.name,
            state.barrier.arrived_count,
            state.barrier.expected,
        )

    # -- leadership -------------------------------------------------------------------

    async def _campaign(self, client: Client, state: KonductorState, leader: LeaderConfig) -> None:
        """Campaign until cancelled; a failing leader coroutine is restarted with back-off."""

        async def lead(lease: Lease) -> None:
            state._lease = lease
            state.elections += 1
            log.info("konductor: elected leader of %r (token %d)", leader.name, lease.token)
            try:
                if leader.run is not None:
                    result = leader.run(lease)
                    if not inspect.isawaitable(result):
                        raise InvalidArgument(
                            f"leader {leader.name!r}: run returned {result!r}, not an awaitable; "
                            "it must be an async callable taking the Lease"
                        )
                    await result
                # Returning does not give leadership up: hold it until loss or shutdown.
                await asyncio.Event().wait()
            finally:
                if state._lease is lease:
                    state._lease = None
                log.info("konductor: no longer leader of %r (token %d)", leader.name, lease.token)

        backoff = Backoff(initial=leader.restart_delay, cap=max(30.0, leader.restart_delay))
        while True:
            try:
                await client.campaign(leader.name, lead, ttl=leader.ttl)
            except Exception as exc:
                # The leader coroutine raised (the Lease was released: another
                # replica may take over), or the campaign itself failed (e.g.
                # Forbidden). Either way: log it, keep it, and campaign again.
                state.leader_error = repr(exc)
                delay = backoff.next_delay()
                log.exception(
                    "konductor: leadership of %r ended with an error; campaigning again in %.1fs",
                    leader.name,
                    delay,
                )
                await asyncio.sleep(delay)

    @staticmethod
    async def _stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # -- the context manager ----------------------------------------------------------

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        began = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            client = self._client()
            if self._owns_client:
                stack.push_async_callback(client.close)
            state = KonductorState(identity=client.identity, client=client)
            if self.leader is not None:
                state.leader_name = self.leader.name
            app_state = getattr(app, "state", None)
            if app_state is not None:  # for the inner lifespan and code outside requests
                setattr(app_state, self.state_key, state)

            budget = _Budget(self.startup_timeout)
            await self._wait_gates(client, state, budget)
            await self._run_once(client, state, budget)
            inner_state: Mapping[str, Any] | None = None
            if self.inner is not None:
                state.phase = "app lifespan start-up"
                inner_state = await stack.enter_async_context(self.inner(app))
            await self._pass_barrier(client, state, budget)

            if self.leader is not None:
                task = asyncio.ensure_future(self._campaign(client, state, self.leader))
                # Registered last, so it runs first at shutdown: the Lease is
                # released before the app's own shutdown, and a waiting replica
                # takes over at once.
                stack.push_async_callback(self._stop, task)

            state.ready = True
            state.phase = "serving"
            state.startup_seconds = round(time.monotonic() - began, 3)
            log.info("konductor: start-up done in %.2fs", state.startup_seconds)
            try:
                yield {**(inner_state or {}), self.state_key: state}
            finally:
                state.ready = False
                state.phase = "stopping"
        state.phase = "stopped"


def konductor_lifespan(
    *,
    gates: Sequence[str | GateConfig] = (),
    once: Mapping[str, Callable[[], Awaitable[object]]] | None = None,
    barrier: tuple[str, int] | BarrierConfig | None = None,
    leader: str | LeaderConfig | None = None,
    startup_timeout: Duration | None = DEFAULT_STARTUP_TIMEOUT,
    once_ttl: Duration = DEFAULT_TTL,
    inner: InnerLifespan | None = None,
    client: Client | Callable[[], Client] | None = None,
    state_key: str = STATE_KEY,
) -> KonductorLifespan:
    """A lifespan that orders start-up across replicas.

    Use it as ``FastAPI(lifespan=konductor_lifespan(...))``.

    ``gates``
        gate names (or :class:`GateConfig`) to wait for first, in order.
    ``once``
        ``{"name": async_fn}``: initialisers run once cluster-wide, in order
        (``client.once``). The replica that runs one gets no timeout on it;
        the others wait for it within ``startup_timeout``. If it raises, start-up
        fails here (and the failure is recorded, so the next start retries).
    ``barrier``
        ``(name, expected)`` or :class:`BarrierConfig`: arrive and wait until
        ``expected`` replicas have.
    ``leader``
        a Lease name or :class:`LeaderConfig` (``run`` coroutine, ``ttl``):
        campaign in the background once start-up is done.
    ``startup_timeout``
        seconds (or ``timedelta``; ``None``: forever) that start-up may spend
        waiting for others in total: gates, another replica's initialiser, the
        barrier. Default 300.
    ``once_ttl``
        the TTL of an initialiser's claim (renewed while it runs; a replica
        that dies mid-run is taken over by another after it).
    ``inner``
        the app's own lifespan, entered after the initialisers and before the
        barrier, and left at shutdown after the Lease is released. Its state
        is merged into the lifespan state. Routers' lifespans
        (``APIRouter(lifespan=...)``) are nested inside by FastAPI as usual,
        so they start once konductor's start-up is done.
    ``client``
        a :class:`konductor.Client` (not closed by the lifespan) or a factory
        of one (created at start-up, closed at shutdown). Default:
        ``Client()``, configured from the environment (``KONDUCTOR_STORE``,
        ``KONDUCTOR_NAMESPACE``, the pod's service account, ``KUBECONFIG``).
    ``state_key``
        the lifespan state key: ``request.state.<state_key>``.

    Raises:
        InvalidArgument / InvalidName: bad configuration, at once (nothing is
            contacted before start-up).
        StartupTimeout: (at start-up) a wait ran out of ``startup_timeout``.
        KonductorError: (at start-up) e.g. ``ConfigurationError`` (no store),
            ``OnceFailed`` (another replica's initialiser failed), ``Forbidden``.
    """
    return KonductorLifespan(
        gates=gates,
        once=once,
        barrier=barrier,
        leader=leader,
        startup_timeout=startup_timeout,
        once_ttl=once_ttl,
        inner=inner,
        client=client,
        state_key=state_key,
    )
