"""SQLAlchemy engines whose connections are capped cluster-wide.

Why: every pod sizes its connection pool on its own, so 20 pods with
``pool_size=10`` open 200 connections against a database that allows 100.
A :class:`CoordinatedEngine` (sync ``Engine``) or
:class:`AsyncCoordinatedEngine` (``AsyncEngine``) keeps the total of open
connections over every process below one cluster semaphore's permit count.

How (the default ``mode="reserve"``, job-level, no API call per checkout):

- On first use in a process (or at :meth:`~CoordinatedEngine.start`) the
  engine *reserves* permits: up to ``pool_size``, at least
  ``min_connections``, as one grant (``count=k``), waiting in the semaphore's
  FIFO queue up to ``reserve_timeout`` for the minimum.
- Its pool is then exactly as large as the permits held: no overflow. A
  connection is opened only when a checkout finds no idle one and a permit
  without a connection is left; otherwise the checkout waits (``pool_timeout``).
- The permits are renewed in the background (every ``ttl/3``) while the
  process lives, and given back by ``dispose()`` / ``close()``, at process
  exit, or — for a killed process — by the others after ``ttl``.
- When checkouts find the pool empty, a background check tries, at most once
  per ``grow_interval`` seconds, to take more permits one at a time (never
  queueing: a process still waiting for its minimum goes first), up to
  ``pool_size``. ``grow_interval=None`` turns growth off.
- Rebalancing (on by default in reserve mode with growth; ``rebalance=False``
  turns it off): every ``grow_interval`` each engine reads the semaphore once
  and moves towards its max-min fair share of the cap (demands: the engines'
  ``pool_size``; at least ``min_connections``): an engine above its share
  while another waits or holds less gives permits back, closing idle
  connections first and never taking a connection in use; one below its share
  grows to it. See docs/sqlalchemy.md, "Fair shares".
- A grant that cannot be renewed in time is **lost** (on the holder's own
  deadline, before anyone else can be granted it): that is logged as an
  error on ``konductor.sqlalchemy``, idle connections are closed at once,
  then connections in use beyond what is still held are invalidated (their
  statement in flight raises ``sqlalchemy.exc.OperationalError`` or
  ``InternalError``, both ``DBAPIError``, their next
  one a disconnect error), and no connection beyond what is still held is
  handed out.

``mode="per_connection"`` instead acquires one permit per checkout and closes
the connection at checkin: two API calls and a fresh database connection per
``connect()``, and a wait in the semaphore's queue when it is full. Use it
only for a few long-held batch connections.

Works in forked workers (gunicorn, multiprocessing): the reservation is made
per process on first use, a child never touches its parent's permits or
connections, and each process counts on its own. Give such engines a store
*factory* (``store=lambda: KubernetesStore(...)``) so that the child can open
its own connections to the store.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

try:
    import sqlalchemy
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import URL, Connection, Engine, make_url
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without SQLAlchemy
    raise ImportError(
        "konductor.integrations.sqlalchemy needs SQLAlchemy, which is not installed: "
        "pip install 'konductor[sqlalchemy]'"
    ) from exc

from konductor import Client, InvalidArgument, SyncClient, validate_name
from konductor import _integration as check
from konductor._integration import DEFAULT_TTL, Duration, ExcInfo
from konductor.integrations._sqlalchemy._async_core import AsyncCore
from konductor.integrations._sqlalchemy._pool import install
from konductor.integrations._sqlalchemy._slots import Mode, Settings, StoreSource
from konductor.integrations._sqlalchemy._sync_core import SyncCore

__all__ = ("AsyncCoordinatedEngine", "CoordinatedEngine")

DEFAULT_RESERVE_TIMEOUT = 60.0
DEFAULT_GROW_INTERVAL = 10.0


def _settings(
    semaphore: str,
    max_connections: int | None,
    pool_size: int,
    min_connections: int,
    mode: str,
    ttl: Duration,
    reserve_timeout: Duration | None,
    grow_interval: Duration | None,
    rebalance: bool | None,
) -> Settings:
    validate_name(semaphore)
    if max_connections is not None:
        check.positive_int(max_connections, "max_connections")
    check.positive_int(pool_size, "pool_size")
    check.positive_int(min_connections, "min_connections")
    if mode not in ("reserve", "per_connection"):
        raise InvalidArgument(f"mode must be 'reserve' or 'per_connection', got {mode!r}")
    if min_connections > pool_size:
        raise InvalidArgument(
            f"min_connections={min_connections} is more than pool_size={pool_size}: the pool "
            "can never hold the minimum it must reserve"
        )
    if mode == "reserve" and max_connections is not None and pool_size > max_connections:
        raise InvalidArgument(
            f"pool_size={pool_size} is more than max_connections={max_connections} (the "
            "cluster-wide cap): one process could never hold that many"
        )
    interval: float | None = None
    if grow_interval is not None:
        interval = check.seconds(grow_interval, "grow_interval")
        if interval <= 0:
            raise InvalidArgument(
                f"grow_interval must be positive (or None for no growth), got {interval:g}"
            )
    if rebalance is not None and not isinstance(rebalance, bool):
        raise InvalidArgument(
            f"rebalance must be True, False or None (the default: on in reserve mode with "
            f"growth), got {rebalance!r}",
            argument="rebalance",
        )
    if rebalance and mode != "reserve":
        raise InvalidArgument(
            "rebalance=True needs mode='reserve': per-connection permits are not shared out",
            argument="rebalance",
        )
    if rebalance and interval is None:
        raise InvalidArgument(
            "rebalance=True needs a grow_interval: it is the period of the read of the "
            "semaphore and of the growth towards the fair share",
            argument="rebalance",
        )
    return Settings(
        semaphore=semaphore,
        max_connections=max_connections,
        pool_size=pool_size,
        min_connections=min_connections,
        mode="reserve" if mode == "reserve" else "per_connection",
        ttl=check.ttl(ttl),
        reserve_timeout=check.timeout(reserve_timeout),
        grow_interval=interval,
        rebalance=mode == "reserve" and interval is not None and rebalance is not False,
    )


def _engine_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    for key in ("poolclass", "pool"):
        if key in kwargs:
            raise InvalidArgument(
                f"{key}= cannot be used with a CoordinatedEngine: it installs its own pool"
            )
    overflow = kwargs.pop("max_overflow", 0)
    if overflow != 0:
        raise InvalidArgument(
            f"max_overflow={overflow!r}: a CoordinatedEngine's pool is exactly as large as the "
            "permits it holds, with no overflow (leave max_overflow out)"
        )
    return kwargs


def _url(value: str | URL) -> URL:
    try:
        return make_url(value)
    except (sa_exc.ArgumentError, TypeError) as exc:
        raise InvalidArgument(
            f"expected an Engine, a URL or a URL string, got {value!r}: {exc}"
        ) from exc


def _check_source(client: Client | SyncClient | None, store: StoreSource) -> None:
    if client is not None and store is not None:
        raise InvalidArgument("pass client= or store=, not both")


class CoordinatedEngine:
    """A sync SQLAlchemy ``Engine`` whose open connections count against a cluster cap.

    ``engine`` is an unused ``Engine`` (its pool is replaced) or a URL, with
    ``engine_kwargs`` passed to :func:`sqlalchemy.create_engine` (e.g.
    ``pool_timeout``, ``pool_pre_ping``, ``connect_args``). ``semaphore``
    names the cluster semaphore; ``max_connections`` is the cluster-wide cap,
    used to create it if missing (an existing one keeps its own permit count:
    ``kubectl edit`` it). ``client`` is a :class:`konductor.SyncClient`;
    otherwise one is built from ``store`` (a store, or a factory of stores,
    needed in forked workers) or from the environment.

    Use ``engine.connect()`` / ``engine.begin()`` as usual, or bind a
    ``Session`` to :attr:`engine`: every checkout is counted. See the module
    docstring for how the reservation works.

    Raises:
        InvalidArgument / InvalidName: bad arguments (``max_connections`` < 1,
            ``min_connections`` > ``pool_size``, ``max_overflow``, an
            ``AsyncEngine``...), before any API call.
    """

    def __init__(
        self,
        engine: Engine | str | URL,
        *,
        semaphore: str,
        max_connections: int | None = None,
        pool_size: int = 5,
        min_connections: int = 1,
        mode: Mode = "reserve",
        ttl: Duration = DEFAULT_TTL,
        reserve_timeout: Duration | None = DEFAULT_RESERVE_TIMEOUT,
        grow_interval: Duration | None = DEFAULT_GROW_INTERVAL,
        rebalance: bool | None = None,
        client: SyncClient | None = None,
        store: StoreSource = None,
        **engine_kwargs: Any,
    ) -> None:
        settings = _settings(
            semaphore,
            max_connections,
            pool_size,
            min_connections,
            mode,
            ttl,
            reserve_timeout,
            grow_interval,
            rebalance,
        )
        _check_source(client, store)
        if isinstance(engine, AsyncEngine):
            raise InvalidArgument(
                "this is an AsyncEngine: use konductor.integrations.sqlalchemy."
                "AsyncCoordinatedEngine for it"
            )
        if isinstance(engine, Engine):
            if engine_kwargs:
                raise InvalidArgument(
                    f"engine keyword arguments {sorted(engine_kwargs)} only apply to a URL, "
                    "not to an existing Engine"
                )
            sa_engine = engine
        else:
            url = _url(engine)
            if url.get_dialect().is_async:
                raise InvalidArgument(
                    f"{url.drivername!r} is an asyncio driver: use AsyncCoordinatedEngine"
                )
            sa_engine = sqlalchemy.create_engine(url, **_engine_kwargs(engine_kwargs))
        self.engine: Engine = sa_engine
        """The SQLAlchemy engine (bind sessions to it); its pool is the coordinated one."""
        self.settings = settings
        self._core = SyncCore(settings, client, store)
        install(sa_engine, self._core, settings)

    def connect(self) -> Connection:
        """``with engine.connect() as conn:`` (reserves on first use in this process).

        Raises:
            AcquireTimeout: the first use could not reserve ``min_connections``
                within ``reserve_timeout``.
            sqlalchemy.exc.TimeoutError: every held connection stayed in use for
                ``pool_timeout``.
        """
        return self.engine.connect()

    def begin(self) -> AbstractContextManager[Connection]:
        """``with engine.begin() as conn:``: a connection in a transaction (see connect)."""
        return self.engine.begin()

    def start(self) -> None:
        """Reserve now rather than on the first checkout (e.g. at startup).

        Raises:
            AcquireTimeout: not even ``min_connections`` permits within ``reserve_timeout``.
            KonductorError: the engine is closed.
        """
        self._core.start()

    @property
    def held(self) -> int:
        """Permits (so: connections at most) this process holds right now."""
        return self._core.held

    def status(self) -> str:
        """A one-line summary: held, in use, owed after a loss, lost."""
        return self._core.status()

    def dispose(self) -> None:
        """Close idle connections and give the permits back.

        The engine stays usable: its next checkout reserves again. Connections
        still checked out are closed when they are returned (and are no longer
        counted meanwhile; a warning says how many).
        """
        self._core.release()
        self.engine.dispose()

    def close(self) -> None:
        """Dispose for good (and close the SyncClient this engine built). Idempotent."""
        self._core.close()
        self.engine.dispose()

    def __enter__(self) -> CoordinatedEngine:
        self.start()
        return self

    def __exit__(self, *exc: *ExcInfo) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CoordinatedEngine {self.engine.url!r} {self._core.status()}>"


class AsyncCoordinatedEngine:
    """An ``AsyncEngine`` whose open connections count against a cluster cap.

    The asyncio twin of :class:`CoordinatedEngine`, with the same arguments:
    ``engine`` is an unused ``AsyncEngine`` or a URL passed with
    ``engine_kwargs`` to :func:`sqlalchemy.ext.asyncio.create_async_engine`;
    ``client`` is an async :class:`konductor.Client` (else one is built on
    the running loop from ``store`` or the environment, and closed with the
    engine). Use it from one event loop, as SQLAlchemy's asyncio engines are.

    ``async with engine.connect() as conn`` and ``async with engine.begin()``
    work as usual, and so does an ``AsyncSession`` bound to :attr:`engine`.
    If the loop ends (``asyncio.run`` returns) without ``dispose()``, the
    reservation is given back as the loop cancels its tasks.

    Raises:
        InvalidArgument / InvalidName: bad arguments, before any API call.
    """

    def __init__(
        self,
        engine: AsyncEngine | str | URL,
        *,
        semaphore: str,
        max_connections: int | None = None,
        pool_size: int = 5,
        min_connections: int = 1,
        mode: Mode = "reserve",
        ttl: Duration = DEFAULT_TTL,
        reserve_timeout: Duration | None = DEFAULT_RESERVE_TIMEOUT,
        grow_interval: Duration | None = DEFAULT_GROW_INTERVAL,
        rebalance: bool | None = None,
        client: Client | None = None,
        store: StoreSource = None,
        **engine_kwargs: Any,
    ) -> None:
        settings = _settings(
            semaphore,
            max_connections,
            pool_size,
            min_connections,
            mode,
            ttl,
            reserve_timeout,
            grow_interval,
            rebalance,
        )
        _check_source(client, store)
        if isinstance(engine, Engine):
            raise InvalidArgument(
                "this is a sync Engine: use konductor.integrations.sqlalchemy.CoordinatedEngine"
            )
        if isinstance(engine, AsyncEngine):
            if engine_kwargs:
                raise InvalidArgument(
                    f"engine keyword arguments {sorted(engine_kwargs)} only apply to a URL, "
                    "not to an existing AsyncEngine"
                )
            sa_engine = engine
        else:
            url = _url(engine)
            try:
                sa_engine = create_async_engine(url, **_engine_kwargs(engine_kwargs))
            except sa_exc.InvalidRequestError as exc:
                raise InvalidArgument(
                    f"{url.drivername!r} cannot be used with asyncio ({exc}); use an asyncio "
                    "driver such as postgresql+asyncpg or postgresql+psycopg"
                ) from exc
        self.engine: AsyncEngine = sa_engine
        """The SQLAlchemy ``AsyncEngine`` (bind an AsyncSession to it)."""
        self.settings = settings
        self._core = AsyncCore(settings, client, store)
        install(sa_engine.sync_engine, self._core, settings)

    def connect(self) -> AsyncConnection:
        """``async with engine.connect() as conn:`` (reserves on first use).

        Raises:
            AcquireTimeout: the first use could not reserve ``min_connections``
                within ``reserve_timeout``.
            sqlalchemy.exc.TimeoutError: every held connection stayed in use for
                ``pool_timeout``.
        """
        return self.engine.connect()

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with engine.begin() as conn:`` (see connect)."""
        return self.engine.begin()

    async def start(self) -> None:
        """Reserve now rather than on the first checkout (e.g. in a lifespan hook).

        Raises:
            AcquireTimeout: not even ``min_connections`` permits within ``reserve_timeout``.
            KonductorError: the engine is closed.
        """
        await self._core.start()

    @property
    def held(self) -> int:
        """Permits (so: connections at most) this process holds right now."""
        return self._core.held

    def status(self) -> str:
        """A one-line summary: held, in use, owed after a loss, lost."""
        return self._core.status()

    async def dispose(self) -> None:
        """Close idle connections and give the permits back (see CoordinatedEngine.dispose)."""
        await self._core.release()
        await self.engine.dispose()

    async def close(self) -> None:
        """Dispose for good (and close the Client this engine built). Idempotent."""
        await self._core.close()
        await self.engine.dispose()

    async def __aenter__(self) -> AsyncCoordinatedEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: *ExcInfo) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncCoordinatedEngine {self.engine.url!r} {self._core.status()}>"
