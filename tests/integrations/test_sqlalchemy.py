"""CoordinatedEngine in one process: configuration errors, pool sizing, loss, modes.

PostgreSQL (127.0.0.1:5432) is real in every test and its ``pg_stat_activity``
is the witness of how many connections are open. The store is the in-process
MemoryStore where one process suffices, and the real API server where the
test takes a reservation away from outside.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import StaticPool

from konductor import (
    AcquireTimeout,
    Client,
    InvalidArgument,
    InvalidName,
    MemoryStore,
    SyncClient,
)
from konductor.integrations import sqlalchemy as ksa
from konductor.integrations.sqlalchemy import AsyncCoordinatedEngine, CoordinatedEngine
from konductor.store import SEMAPHORE, KubernetesStore
from tests.store.conftest import fresh_namespace

SYNC_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ASYNC_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[2]


def pg_count(app: str) -> int:
    with psycopg.connect(
        "host=127.0.0.1 user=postgres dbname=test application_name=konductor-witness"
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
        assert row is not None
        return int(row[0])


def closed(app: str) -> None:
    """Until PostgreSQL no longer lists a connection of ``app``.

    A backend leaves ``pg_stat_activity`` a moment after its client closed
    the socket (the server process exits on its own time), so an immediate
    count can still see it. A connection kept open (idle in a pool) never
    leaves: this fails for it as a direct assertion would.
    """
    eventually(lambda: pg_count(app) == 0, timeout=20, what=f"connections of {app} closed")


def watch_until_closed(app: str, seen: dict[str, float]) -> None:
    """Record in ``seen["a-closed"]`` when PostgreSQL first shows no connection of ``app``.

    One witness connection, in autocommit (each query a fresh pg_stat_activity
    snapshot), polled every 20 ms: a new connection per poll takes tens of
    milliseconds, far more under load, and would record the closing late.
    """
    with psycopg.connect(
        "host=127.0.0.1 user=postgres dbname=test application_name=konductor-witness",
        autocommit=True,
    ) as conn:
        while "a-closed" not in seen and time.monotonic() < seen["cut"] + 30:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()
            if row is not None and int(row[0]) == 0:
                seen["a-closed"] = time.monotonic()
            time.sleep(0.02)


def eventually(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def app() -> str:
    return f"kt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def memory_client() -> Iterator[SyncClient]:
    with SyncClient(MemoryStore) as client:
        yield client


def sync_engine(client: SyncClient, app: str, **kwargs: Any) -> CoordinatedEngine:
    kwargs.setdefault("semaphore", "db")
    kwargs.setdefault("max_connections", 3)
    return CoordinatedEngine(
        SYNC_URL, client=client, connect_args={"application_name": app}, **kwargs
    )


# --- bad input: clear errors at construction, before any API call ---------------------


@pytest.mark.parametrize("cap", [0, -1])
def test_max_connections_below_one_is_refused(cap: int) -> None:
    with pytest.raises(InvalidArgument, match="max_connections must be at least 1"):
        CoordinatedEngine(SYNC_URL, semaphore="db", max_connections=cap)
    with pytest.raises(InvalidArgument, match="max_connections must be at least 1"):
        AsyncCoordinatedEngine(ASYNC_URL, semaphore="db", max_connections=cap)


def test_min_connections_above_pool_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"min_connections=6 is more than pool_size=5"):
        CoordinatedEngine(SYNC_URL, semaphore="db", pool_size=5, min_connections=6)
    with pytest.raises(InvalidArgument, match=r"min_connections=3 is more than pool_size=2"):
        AsyncCoordinatedEngine(ASYNC_URL, semaphore="db", pool_size=2, min_connections=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"min_connections": 0}, "min_connections must be at least 1"),
        ({"max_connections": 4, "pool_size": 5}, "pool_size=5 is more than max_connections=4"),
        ({"max_connections": "8"}, "max_connections must be an integer"),
        ({"mode": "per_checkout"}, "mode must be"),
        ({"grow_interval": 0}, "grow_interval must be positive"),
        ({"ttl": 0.2}, "below 1s"),
        ({"reserve_timeout": -1}, "timeout must be >= 0"),
        ({"max_overflow": 5}, "no overflow"),
        ({"poolclass": StaticPool}, "installs its own pool"),
        ({"client": object(), "store": MemoryStore}, "not both"),
        ({"rebalance": "yes"}, "rebalance must be True, False or None"),
        ({"rebalance": True, "mode": "per_connection"}, "rebalance=True needs mode='reserve'"),
        ({"rebalance": True, "grow_interval": None}, "rebalance=True needs a grow_interval"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        CoordinatedEngine(SYNC_URL, semaphore="db", **kwargs)


def test_bad_names_and_engines_are_refused() -> None:
    with pytest.raises(InvalidName):
        CoordinatedEngine(SYNC_URL, semaphore="Not A Name")
    with pytest.raises(InvalidArgument, match="AsyncCoordinatedEngine"):
        CoordinatedEngine(create_async_engine(ASYNC_URL), semaphore="db")
    with pytest.raises(InvalidArgument, match="AsyncCoordinatedEngine"):
        CoordinatedEngine(ASYNC_URL, semaphore="db")
    with pytest.raises(InvalidArgument, match="CoordinatedEngine"):
        AsyncCoordinatedEngine(sqlalchemy.create_engine(SYNC_URL), semaphore="db")
    with pytest.raises(InvalidArgument, match="only apply to a URL"):
        CoordinatedEngine(sqlalchemy.create_engine(SYNC_URL), semaphore="db", echo=True)
    with pytest.raises(InvalidArgument, match="StaticPool"):
        CoordinatedEngine(
            sqlalchemy.create_engine("sqlite://", poolclass=StaticPool), semaphore="db"
        )
    with pytest.raises(InvalidArgument, match="expected an Engine"):
        CoordinatedEngine("not a url", semaphore="db")


def test_import_hygiene() -> None:
    code = (
        "import sys, konductor, konductor.integrations\n"
        "assert 'sqlalchemy' not in sys.modules, 'import konductor imported sqlalchemy'\n"
        "sys.modules['sqlalchemy'] = None\n"
        "try:\n"
        "    import konductor.integrations.sqlalchemy\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'konductor[sqlalchemy]'" in out.stdout
    assert ksa.__all__ == ("AsyncCoordinatedEngine", "CoordinatedEngine")


# --- the pool is exactly what is held ------------------------------------------------


def test_pool_is_sized_to_the_permits_held_without_overflow(
    memory_client: SyncClient, app: str
) -> None:
    engine = sync_engine(memory_client, app, pool_size=3, pool_timeout=1, grow_interval=None)
    other = sync_engine(memory_client, app, pool_size=3, min_connections=1, grow_interval=None)
    try:
        other.start()  # the cluster cap is 3, the other "process" takes them all...
        assert other.held == 3
        with pytest.raises(AcquireTimeout):
            sync_engine(memory_client, app, pool_size=3, reserve_timeout=0.3).start()
        other.dispose()  # ...and gives them back
        assert other.held == 0

        conns = [engine.connect() for _ in range(3)]
        assert engine.held == 3
        assert pg_count(app) == 3
        with pytest.raises(sqlalchemy.exc.TimeoutError, match="holds 3 permit"):
            engine.connect()  # no overflow beyond the permits held
        for c in conns:
            c.close()
        assert pg_count(app) == 3  # kept idle: a reservation, not a per-checkout cost
        engine.engine.dispose()  # SQLAlchemy's dispose: idle connections close, permits stay
        closed(app)
        assert engine.held == 3
        with engine.begin() as conn:
            assert conn.execute(text("SELECT 7")).scalar() == 7
        engine.dispose()  # ours: closes and gives the permits back
        assert engine.held == 0
        closed(app)
        with engine.connect() as conn:  # usable again: reserves on first use
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert engine.held == 3
    finally:
        engine.close()
        other.close()
    closed(app)
    with pytest.raises(Exception, match="closed"):
        engine.connect()


def test_reservation_takes_what_is_free_and_grows_on_demand(
    memory_client: SyncClient, app: str
) -> None:
    big = sync_engine(memory_client, app, max_connections=5, pool_size=4, grow_interval=None)
    small = sync_engine(memory_client, app, max_connections=5, pool_size=4, grow_interval=0.2)
    try:
        big.start()
        small.start()
        assert (big.held, small.held) == (4, 1)  # up to pool_size, at least min_connections
        big.dispose()
        time.sleep(1)
        assert small.held == 1  # no demand, no growth: free permits stay free for others
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                with small.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0.02)"))

        threads = [threading.Thread(target=busy) for _ in range(6)]
        for t in threads:
            t.start()
        eventually(lambda: small.held == 4, what=small.status())
        stop.set()
        for t in threads:
            t.join()
        assert pg_count(app) <= 4
    finally:
        big.close()
        small.close()


def test_rebalancing_is_on_by_default_in_reserve_mode_with_growth_only() -> None:
    def rebalance(**kwargs: Any) -> bool:
        return CoordinatedEngine(SYNC_URL, semaphore="db", **kwargs).settings.rebalance

    assert rebalance()
    assert rebalance(rebalance=True)
    assert not rebalance(rebalance=False)
    assert not rebalance(grow_interval=None)  # no growth: nothing could take a share up
    assert not rebalance(mode="per_connection")
    assert AsyncCoordinatedEngine(ASYNC_URL, semaphore="db").settings.rebalance


def backend_pids(conns: list[Connection]) -> list[int]:
    return [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in conns]


def test_a_shrinking_engine_never_takes_a_connection_in_use(
    memory_client: SyncClient, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    """All of A's 3 connections are in use when B arrives (cap 3: shares 2 + 1): A gives
    one back only when one is returned, and B gets that permit only after it closed."""
    caplog.set_level(logging.INFO, logger="konductor.sqlalchemy")
    other = app + "-b"
    a = sync_engine(memory_client, app, pool_size=3, grow_interval=0.2)
    b = sync_engine(memory_client, other, pool_size=3, grow_interval=0.2)
    # The remainder of 3 / 2 goes to the first member id: make it A's (ids are random).
    a._core.member, b._core.member = "0-a", "1-b"
    try:
        a.start()
        assert a.held == 3
        conns = [a.connect() for _ in range(3)]
        pids = backend_pids(conns)
        assert pg_count(app) == 3
        started = threading.Thread(target=b.start)
        started.start()  # B waits in the semaphore's queue for its minimum
        eventually(lambda: "giving=1" in a.status(), what=a.status())
        assert "giving back 1 of 3 connection permit(s)" in caplog.text
        looks = a._core.last_look
        eventually(lambda: a._core.last_look >= looks + 0.6, what="three more reads")
        # Rebalancing rounds over 3 more growth intervals: nothing in use was taken.
        assert backend_pids(conns) == pids
        assert (a.held, b.held, pg_count(app)) == (3, 0, 3)
        assert started.is_alive()
        conns[0].close()  # one comes back: closed (not reused), then its permit goes to B
        started.join(20)
        assert not started.is_alive()
        assert (a.held, b.held) == (2, 1)
        assert pg_count(app) == 2  # closed before B could be granted the permit
        assert backend_pids(conns[1:]) == pids[1:]
        assert "gave back 1 connection permit(s)" in caplog.text
        with b.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert pg_count(app) + pg_count(other) <= 3
        for c in conns[1:]:
            c.close()
    finally:
        a.close()
        b.close()
    closed(app)
    closed(other)


def test_with_rebalance_off_the_first_engine_keeps_what_it_reserved(
    memory_client: SyncClient, app: str
) -> None:
    a = sync_engine(memory_client, app, pool_size=3, grow_interval=0.2, rebalance=False)
    b = sync_engine(
        memory_client, app, pool_size=3, grow_interval=0.2, rebalance=False, reserve_timeout=2
    )
    try:
        a.start()
        with pytest.raises(AcquireTimeout):
            b.start()  # 10 growth intervals: A never gives anything back
        assert a.held == 3
        assert "share=" not in a.status()
    finally:
        a.close()
        b.close()


def test_per_connection_mode_holds_one_permit_per_checkout(
    memory_client: SyncClient, app: str
) -> None:
    engine = sync_engine(memory_client, app, max_connections=2, mode="per_connection")
    inside = peak = server_peak = 0
    lock = threading.Lock()
    closed_pids: set[int] = set()  # backends whose client closed them (checked in)

    def open_on_server() -> int:
        """Connections of ``app`` PostgreSQL lists that no client has closed yet.

        A backend stays listed for a moment after its client closed it (the
        server process exits on its own time); those are excluded by pid, so
        what is counted is exactly what the engine holds open: a connection it
        opened beyond its permits would be counted.
        """
        with psycopg.connect(
            "host=127.0.0.1 user=postgres dbname=test application_name=konductor-witness"
        ) as witness:
            rows = witness.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchall()
        return len({int(r[0]) for r in rows} - closed_pids)

    def work() -> None:
        nonlocal inside, peak, server_peak
        for _ in range(3):
            with engine.connect() as conn:
                pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                    server_peak = max(server_peak, open_on_server())
                conn.execute(text("SELECT pg_sleep(0.05)"))
                with lock:
                    inside -= 1
                    # Checked in next, and so closed: from here on it is not the
                    # engine's to count (a connection it opened beyond its permits
                    # never gets here, and is counted).
                    closed_pids.add(pid)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    assert server_peak == 2
    closed(app)  # closed at checkin: nothing kept idle
    assert engine.held == 0
    engine.close()


# --- losing the reservation ----------------------------------------------------------


@pytest.mark.kubernetes
def test_a_lost_reservation_is_logged_and_stops_new_connections(
    kube_crds: Any, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="konductor.sqlalchemy")
    ns = fresh_namespace(kube_crds)

    def store() -> KubernetesStore:
        return KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)

    engine = CoordinatedEngine(
        SYNC_URL,
        semaphore="lossy",
        max_connections=3,
        pool_size=3,
        ttl=3,
        grow_interval=None,
        store=store,
        pool_timeout=1,
        connect_args={"application_name": app},
    )
    try:
        conns = [engine.connect() for _ in range(3)]
        for c in conns:
            c.execute(text("SELECT 1"))
        conns[1].close()
        conns[2].close()
        assert pg_count(app) == 3  # 1 in use, 2 idle

        async def take_away() -> None:  # as if another client judged us expired
            async with store() as s:
                obj = await s.get(SEMAPHORE, "lossy")
                status = {**obj.status, "holders": [], "inUse": 0}
                await s.replace_status(SEMAPHORE, "lossy", status, version=obj.version)

        asyncio.run(take_away())
        eventually(lambda: engine.held == 0, what=engine.status())  # next renewal notices
        # Idle ones and the one in use: none is left open without its permit.
        eventually(lambda: pg_count(app) == 0, what="connections closed at once")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors, caplog.text
        assert "lost 3 reserved connection permit(s) on semaphore 'lossy'" in errors[0].message
        # The user of the connection in use sees a disconnect error on its next call.
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            conns[0].execute(text("SELECT 1"))
        assert info.value.connection_invalidated
        conns[0].close()
        with pytest.raises(sqlalchemy.exc.TimeoutError, match="holds 0 permit"):
            engine.connect()  # nothing beyond what is still held
        closed(app)
        assert "lost=3" in engine.status()
        assert "in_use=0" in engine.status()
    finally:
        engine.close()


@pytest.mark.kubernetes
def test_a_lost_per_connection_permit_closes_its_connection_at_once(
    kube_crds: Any, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="konductor.sqlalchemy")
    ns = fresh_namespace(kube_crds)

    def store() -> KubernetesStore:
        return KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)

    engine = CoordinatedEngine(
        SYNC_URL,
        semaphore="lossy-pc",
        max_connections=2,
        mode="per_connection",
        ttl=3,
        store=store,
        connect_args={"application_name": app},
    )
    try:
        conn = engine.connect()
        conn.execute(text("SELECT 1"))
        assert pg_count(app) == 1

        async def take_away() -> None:  # as if another client judged us expired
            async with store() as s:
                obj = await s.get(SEMAPHORE, "lossy-pc")
                status = {**obj.status, "holders": [], "inUse": 0}
                await s.replace_status(SEMAPHORE, "lossy-pc", status, version=obj.version)

        asyncio.run(take_away())
        # Closed while still checked out: not counted, so not kept open.
        eventually(lambda: pg_count(app) == 0, what="the connection closed at once")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "lost the permit" in errors[0].message
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            conn.execute(text("SELECT 1"))
        assert info.value.connection_invalidated
        conn.close()
        with engine.connect() as again:  # a new checkout takes a new permit
            assert again.execute(text("SELECT 2")).scalar() == 2
        closed(app)
        assert engine.held == 0
    finally:
        engine.close()


@pytest.mark.kubernetes
def test_a_statement_in_flight_when_its_permit_is_lost_leaves_its_connection_invalidated(
    kube_crds: Any, app: str
) -> None:
    # Which error the statement in flight ends with is a race (the cancel or the closed
    # socket reaches psycopg first), and the dialect calls it a disconnect only if the
    # socket was already closed when it looked. Whatever it is, the Connection must come
    # out invalidated: otherwise its user's close() rolls back on a dead socket and raises.
    # Several rounds, since one round may miss the bad interleaving.
    ns = fresh_namespace(kube_crds)

    def store() -> KubernetesStore:
        return KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)

    for round_ in range(4):
        name = f"inflight-{round_}"
        engine = CoordinatedEngine(
            SYNC_URL,
            semaphore=name,
            max_connections=1,
            pool_size=1,
            ttl=3,
            grow_interval=None,
            store=store,
            connect_args={"application_name": app},
        )
        try:
            conn = engine.connect()
            errors: list[BaseException] = []

            def long_query(
                conn: sqlalchemy.Connection = conn, errors: list[BaseException] = errors
            ) -> None:
                try:
                    conn.execute(text("SELECT pg_sleep(60)"))
                except sqlalchemy.exc.DBAPIError as exc:
                    errors.append(exc)

            query = threading.Thread(target=long_query, daemon=True)
            query.start()
            eventually(lambda: pg_count(app) == 1, what="the long query running")

            async def take_away(name: str = name) -> None:  # as if judged expired
                async with store() as s:
                    obj = await s.get(SEMAPHORE, name)
                    status = {**obj.status, "holders": [], "inUse": 0}
                    await s.replace_status(SEMAPHORE, name, status, version=obj.version)

            asyncio.run(take_away())
            query.join(30)
            assert not query.is_alive()
            [error] = errors
            assert isinstance(error, sqlalchemy.exc.DBAPIError)
            assert error.connection_invalidated, repr(error)
            assert conn.invalidated
            conn.close()  # no rollback on the closed socket: does not raise
            closed(app)
        finally:
            engine.close()


# --- asyncio -------------------------------------------------------------------------


def async_engine(client: Client, app: str, **kwargs: Any) -> AsyncCoordinatedEngine:
    kwargs.setdefault("semaphore", "db")
    kwargs.setdefault("max_connections", 3)
    return AsyncCoordinatedEngine(
        ASYNC_URL,
        client=client,
        connect_args={"server_settings": {"application_name": app}},
        **kwargs,
    )


async def test_a_shrinking_async_engine_never_takes_a_connection_in_use(app: str) -> None:
    """The async twin of the sync test: A's 3 connections in use when B arrives."""
    other = app + "-b"

    async def until(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    async with Client(MemoryStore()) as client:
        a = async_engine(client, app, pool_size=3, grow_interval=0.2)
        b = async_engine(client, other, pool_size=3, grow_interval=0.2)
        a._core.member, b._core.member = "0-a", "1-b"  # A gets the remainder of 3 / 2
        try:
            await a.start()
            conns = [await a.connect().start() for _ in range(3)]
            pid = text("SELECT pg_backend_pid()")
            pids = [(await c.execute(pid)).scalar_one() for c in conns]
            starting = asyncio.create_task(b.start())
            await until(lambda: "giving=1" in a.status(), a.status())
            looks = a._core.last_look
            await until(lambda: a._core.last_look >= looks + 0.6, "three more reads")
            assert [(await c.execute(pid)).scalar_one() for c in conns] == pids
            assert (a.held, b.held, await asyncio.to_thread(pg_count, app)) == (3, 0, 3)
            assert not starting.done()
            await conns[0].close()  # one comes back: closed, then its permit goes to B
            await asyncio.wait_for(starting, 20)
            assert (a.held, b.held) == (2, 1)
            assert await asyncio.to_thread(pg_count, app) == 2
            assert [(await c.execute(pid)).scalar_one() for c in conns[1:]] == pids[1:]
            for c in conns[1:]:
                await c.close()
        finally:
            await a.close()
            await b.close()
    await asyncio.to_thread(closed, app)
    await asyncio.to_thread(closed, other)


async def test_async_engine_as_users_write_it(app: str) -> None:
    async with Client(MemoryStore()) as client:
        async with async_engine(client, app, pool_size=2, pool_timeout=1) as engine:
            assert engine.held == 2  # reserved on entry
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 2"))
            async with AsyncSession(engine.engine) as session:
                assert (await session.execute(text("SELECT 3"))).scalar() == 3
            a, b = await engine.engine.connect().start(), await engine.connect().start()
            assert await asyncio.to_thread(pg_count, app) == 2
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                await engine.engine.connect().start()  # no overflow
            await a.close()
            await b.close()
            await engine.dispose()
            assert engine.held == 0
            assert await asyncio.to_thread(pg_count, app) == 0
            async with engine.connect() as conn:  # reserves again on first use
                await conn.execute(text("SELECT 1"))
            assert engine.held == 2
        assert engine.held == 0
        assert await asyncio.to_thread(pg_count, app) == 0
        semaphore = await client.store.get(SEMAPHORE, "db")
        assert semaphore.status["inUse"] == 0


async def test_async_engine_from_an_engine_and_per_connection_mode(app: str) -> None:
    async with Client(MemoryStore()) as client:
        sa_engine = create_async_engine(
            ASYNC_URL, connect_args={"server_settings": {"application_name": app}}
        )
        engine = AsyncCoordinatedEngine(
            sa_engine, semaphore="batch", max_connections=1, mode="per_connection", client=client
        )
        assert engine.engine is sa_engine
        inside = 0

        async def job(n: int) -> int:
            nonlocal inside
            async with engine.connect() as conn:
                inside += 1
                assert inside == 1  # one permit: one connection at a time
                await conn.execute(text("SELECT pg_sleep(0.05)"))
                inside -= 1
            return n

        assert await asyncio.gather(*(job(i) for i in range(3))) == [0, 1, 2]
        assert await asyncio.to_thread(pg_count, app) == 0
        await engine.close()


# --- the engine's network to the API server hangs --------------------------------------


@pytest.mark.kubernetes
def test_a_blackholed_engine_closes_its_connections_before_another_engine_gets_the_permits(
    kube_crds: Any, app: str, tmp_path: Path
) -> None:
    # Engine A reaches the API server through a fault proxy (default store timeouts);
    # it holds all 3 permits: one connection runs a long query, one is checked out
    # between statements, one is idle. At a random moment the proxy is blackholed.
    # Witnesses: pg_stat_activity (PostgreSQL's own count of A's connections) and the
    # moment engine B, with its own direct connection, has reserved the permits.
    from tests.store.conftest import kubeconfig_via
    from tests.support.tcpproxy import TcpProxy

    ttl, margin = 3.0, 1.0
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    via = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    other_app = f"{app}-b"

    def engine_for(application: str, kubeconfig: Path, **kwargs: Any) -> CoordinatedEngine:
        return CoordinatedEngine(
            SYNC_URL,
            semaphore="cut-db",
            max_connections=3,
            pool_size=3,
            ttl=ttl,
            store=lambda: KubernetesStore(ns, kubeconfig=kubeconfig),
            connect_args={"application_name": application},
            **kwargs,
        )

    a = engine_for(app, via, pool_timeout=1, grow_interval=0.2)
    b = engine_for(other_app, kube_crds.admin_kubeconfig, reserve_timeout=60, grow_interval=None)
    seen: dict[str, float] = {}
    errors: dict[str, BaseException] = {}
    try:
        busy, between, idle = a.connect(), a.connect(), a.connect()
        between.execute(text("SELECT 1"))
        idle.close()
        assert pg_count(app) == 3

        def long_query() -> None:
            try:
                busy.execute(text("SELECT pg_sleep(60)"))
            except sqlalchemy.exc.DBAPIError as exc:
                errors["busy"] = exc
                seen["busy-raised"] = time.monotonic()

        def b_reserves() -> None:
            b.start()
            seen["b-granted"] = time.monotonic()

        def count_a() -> None:
            watch_until_closed(app, seen)

        query = threading.Thread(target=long_query, daemon=True)
        query.start()
        eventually(lambda: pg_count(app) == 3, what="the long query running")
        time.sleep(random.uniform(0.0, ttl / 3 * 1.2))
        proxy.blackhole()
        seen["cut"] = time.monotonic()
        helpers = [threading.Thread(target=f, daemon=True) for f in (b_reserves, count_a)]
        for t in helpers:
            t.start()
        for t in helpers:
            t.join(70)
        query.join(30)
        print(
            f"\nsqlalchemy blackhole: cut->connections closed {seen['a-closed'] - seen['cut']:.3f}s"
            f" (long query raised at {seen['busy-raised'] - seen['cut']:.3f}s), "
            f"cut->other engine reserved {seen['b-granted'] - seen['cut']:.3f}s"
        )
        # Safety: PostgreSQL saw A's connections go before B held the permits.
        assert seen["a-closed"] < seen["b-granted"]
        assert seen["a-closed"] - seen["cut"] <= 0.9 * ttl + margin
        assert b.held == 3
        # What A's users see: the statement in flight fails with a DB-API error, whose
        # class depends on which reaches the driver first: OperationalError (the cancel:
        # QueryCanceled; or a disconnect), or InternalError (psycopg's "got no result
        # from the query" when the socket closes while it reads the answer; seen about
        # 1 run in 5). The next statement of a connection they had checked out fails
        # with a disconnect error.
        assert isinstance(
            errors["busy"], sqlalchemy.exc.OperationalError | sqlalchemy.exc.InternalError
        ), errors["busy"]
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            between.execute(text("SELECT 1"))
        assert info.value.connection_invalidated
        busy.close()
        between.close()
        with pytest.raises(sqlalchemy.exc.TimeoutError, match="holds 0 permit"):
            a.connect()  # nothing beyond what it still holds
        assert a.held == 0

        # The network heals and B gives the permits back: A grows into them again.
        proxy.pass_through()
        b.dispose()
        assert pg_count(other_app) == 0

        def a_works() -> bool:
            try:
                with a.connect() as conn:
                    return bool(conn.execute(text("SELECT 1")).scalar() == 1)
            except sqlalchemy.exc.TimeoutError:
                return False

        eventually(a_works, timeout=60, what=a.status())
        assert a.held >= 1
        a.dispose()
        closed(app)

        async def semaphore_status() -> dict[str, Any]:
            async with KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig) as store:
                return dict((await store.get(SEMAPHORE, "cut-db")).status)

        status = asyncio.run(semaphore_status())
        assert not status.get("holders")
        assert not status.get("queue")
    finally:
        a.close()
        b.close()
        proxy.close()


@pytest.mark.kubernetes
async def test_a_blackholed_async_engine_closes_its_connections_before_another_gets_the_permits(
    kube_crds: Any, app: str, tmp_path: Path
) -> None:
    from tests.store.conftest import kubeconfig_via
    from tests.support.tcpproxy import TcpProxy

    ttl, margin = 3.0, 1.0
    ns = fresh_namespace(kube_crds)
    proxy = TcpProxy.to(kube_crds.server)
    via = kubeconfig_via(kube_crds.admin_kubeconfig, proxy.server, tmp_path)
    other_app = f"{app}-b"
    a = AsyncCoordinatedEngine(
        ASYNC_URL,
        semaphore="cut-adb",
        max_connections=2,
        pool_size=2,
        ttl=ttl,
        store=lambda: KubernetesStore(ns, kubeconfig=via),
        pool_timeout=1,
        grow_interval=0.2,
        connect_args={"server_settings": {"application_name": app}},
    )
    b = CoordinatedEngine(
        SYNC_URL,
        semaphore="cut-adb",
        max_connections=2,
        pool_size=2,
        ttl=ttl,
        reserve_timeout=60,
        store=lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig),
        connect_args={"application_name": other_app},
    )
    seen: dict[str, float] = {}
    try:
        busy = await a.connect().start()
        between = await a.connect().start()
        await between.execute(text("SELECT 1"))
        query = asyncio.ensure_future(busy.execute(text("SELECT pg_sleep(60)")))
        for _ in range(100):  # the long query running
            if await asyncio.to_thread(pg_count, app) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(random.uniform(0.0, ttl / 3 * 1.2))
        proxy.blackhole()
        seen["cut"] = time.monotonic()

        def b_reserves() -> None:
            b.start()
            seen["b-granted"] = time.monotonic()

        def count_a() -> None:
            watch_until_closed(app, seen)

        await asyncio.gather(asyncio.to_thread(b_reserves), asyncio.to_thread(count_a))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as in_flight:
            await asyncio.wait_for(query, 30)
        print(
            f"\nasync sqlalchemy blackhole: cut->connections closed "
            f"{seen['a-closed'] - seen['cut']:.3f}s, "
            f"cut->other engine reserved {seen['b-granted'] - seen['cut']:.3f}s"
        )
        assert seen["a-closed"] < seen["b-granted"]
        assert seen["a-closed"] - seen["cut"] <= 0.9 * ttl + margin
        assert in_flight.value.connection_invalidated
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            await between.execute(text("SELECT 1"))
        assert info.value.connection_invalidated
        await busy.close()
        await between.close()
        assert a.held == 0

        proxy.pass_through()
        await asyncio.to_thread(b.dispose)
        deadline = time.monotonic() + 60
        while True:
            try:
                async with a.connect() as conn:
                    assert (await conn.execute(text("SELECT 1"))).scalar() == 1
                break
            except sqlalchemy.exc.TimeoutError:
                assert time.monotonic() < deadline, a.status()
        await a.dispose()
        assert await asyncio.to_thread(pg_count, app) == 0
    finally:
        await a.close()
        await asyncio.to_thread(b.close)
        proxy.close()
