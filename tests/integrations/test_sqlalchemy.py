"""CoordinatedEngine in one process: configuration errors, pool sizing, loss, modes.

PostgreSQL (127.0.0.1:5432) is real in every test and its ``pg_stat_activity``
is the witness of how many connections are open. The store is the in-process
MemoryStore where one process suffices, and the real API server where the
test takes a reservation away from outside.
"""

from __future__ import annotations

import asyncio
import logging
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
        assert pg_count(app) == 0
        assert engine.held == 3
        with engine.begin() as conn:
            assert conn.execute(text("SELECT 7")).scalar() == 7
        engine.dispose()  # ours: closes and gives the permits back
        assert engine.held == 0
        assert pg_count(app) == 0
        with engine.connect() as conn:  # usable again: reserves on first use
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert engine.held == 3
    finally:
        engine.close()
        other.close()
    assert pg_count(app) == 0
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


def test_per_connection_mode_holds_one_permit_per_checkout(
    memory_client: SyncClient, app: str
) -> None:
    engine = sync_engine(memory_client, app, max_connections=2, mode="per_connection")
    inside = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        for _ in range(3):
            with engine.connect() as conn:
                with lock:
                    inside += 1
                    peak = max(peak, inside, pg_count(app))
                conn.execute(text("SELECT pg_sleep(0.05)"))
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    assert pg_count(app) == 0  # closed at checkin: nothing kept idle
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
        eventually(lambda: pg_count(app) == 1, what="idle connections closed at once")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors, caplog.text
        assert "lost 3 reserved connection permit(s) on semaphore 'lossy'" in errors[0].message
        with pytest.raises(sqlalchemy.exc.TimeoutError, match="holds 0 permit"):
            engine.connect()  # nothing beyond what is still held
        conns[0].close()  # the one in use closes when it comes back
        assert pg_count(app) == 0
        assert "lost=3" in engine.status()
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
