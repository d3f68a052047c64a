"""konductor_lifespan in one process: configuration errors, ordering, composition, state.

Several "replicas" are FastAPI apps in one event loop, each with its own
client on one shared in-memory store; requests go through the real ASGI app
with the lifespan state Starlette hands to it. The cross-process claims
(exactly one migration, one leader, handover on SIGTERM / SIGKILL, uvicorn's
exit status) are tested with real uvicorn processes and the real API server in
test_fastapi_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request

from konductor import (
    Client,
    InvalidArgument,
    InvalidName,
    Lease,
    MemoryStore,
    WaitTimeout,
)
from konductor.integrations.fastapi import (
    BarrierConfig,
    GateConfig,
    KonductorState,
    KonductorStateDep,
    LeaderConfig,
    StartupTimeout,
    konductor_lifespan,
)
from konductor.store import LEASE


async def noop() -> None:
    return None


async def get(app: FastAPI, path: str, state: dict[str, Any]) -> tuple[int, Any]:
    """One GET through the ASGI app, with ``state`` as the lifespan state (as uvicorn does)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def factory(store: MemoryStore, identity: str) -> Any:
    return lambda: Client(store, identity=identity)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls in-memory state set by the lifespan
            await asyncio.sleep(0.01)


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"gates": ["Not_A_Name"]}, InvalidName, "gate name"),
        ({"gates": "db-ready"}, InvalidArgument, "list of gate names"),
        ({"gates": [42]}, InvalidArgument, "GateConfig"),
        ({"once": {"migrations": "not callable"}}, InvalidArgument, "async callable"),
        ({"once": [noop]}, InvalidArgument, "mapping"),
        ({"once": {"Bad Name": noop}}, InvalidName, "once name"),
        ({"barrier": ("app-start", 0)}, InvalidArgument, "at least 1"),
        ({"barrier": "app-start"}, InvalidArgument, "(name, expected)"),
        ({"leader": LeaderConfig}, InvalidArgument, "lease name"),
        ({"startup_timeout": -1}, InvalidArgument, "timeout"),
        ({"once_ttl": 0.5}, InvalidArgument, "below 1s"),
        ({"client": "kubernetes"}, InvalidArgument, "factory"),
        ({"state_key": "not an identifier"}, InvalidArgument, "identifier"),
    ],
)
def test_bad_configuration_is_refused_at_once(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        konductor_lifespan(**kwargs)


def test_bad_config_objects_are_refused_at_once() -> None:
    with pytest.raises(InvalidArgument, match="below 1s"):
        LeaderConfig("jobs", ttl=0.2)
    with pytest.raises(InvalidArgument, match="async callable"):
        LeaderConfig("jobs", run="nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidName):
        LeaderConfig("Jobs!")
    with pytest.raises(InvalidArgument, match="restart_delay"):
        LeaderConfig("jobs", restart_delay=0)
    with pytest.raises(InvalidArgument, match="party"):
        BarrierConfig("app-start", 3, party="")
    with pytest.raises(InvalidArgument, match="condition type"):
        GateConfig("serve", conditions=[{"type": "Pod", "name": "x"}])

    def sync_lifespan(app: Any) -> Iterator[None]:
        yield

    with pytest.raises(InvalidArgument, match="asynccontextmanager"):
        konductor_lifespan(inner=sync_lifespan)


# -- start-up order, composition and state ---------------------------------------------


async def test_startup_order_composes_with_app_and_router_lifespans(store: MemoryStore) -> None:
    events: list[str] = []
    setup = Client(store, identity="ops")
    await setup.open_gate("deps-ready")

    async def migrate() -> str:
        events.append("migrate")
        return "v1"

    async def lead(lease: Lease) -> None:
        events.append(f"lead {lease.token}")
        try:
            await asyncio.Event().wait()
        finally:
            events.append("lead cancelled")

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        k: KonductorState = app.state.konductor
        events.append(f"own start ({k.phase}, migrations ran here: {k.once_ran['migrations']})")
        yield {"db": "pool"}
        events.append(f"own stop (leader: {k.is_leader})")

    @asynccontextmanager
    async def router_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append(f"router start (ready: {app.state.konductor.ready})")
        yield {"cache": "warm"}
        events.append("router stop")

    router = APIRouter(lifespan=router_lifespan)

    @router.get("/state")
    async def state(request: Request, k: KonductorStateDep) -> dict[str, Any]:
        assert request.state.konductor is k
        return {"db": request.state.db, "cache": request.state.cache, **k.to_dict()}

    app = FastAPI(
        lifespan=konductor_lifespan(
            gates=["deps-ready"],
            once={"migrations": migrate},
            barrier=("app-start", 1),
            leader=LeaderConfig("jobs", run=lead, ttl=3),
            inner=own,
            client=factory(store, "replica-0"),
        )
    )
    app.include_router(router)

    async with app.router.lifespan_context(app) as lifespan_state:
        await until(lambda: "lead 0" in events)
        status, body = await get(app, "/state", lifespan_state)
    assert status == 200
    assert body["db"] == "pool"
    assert body["cache"] == "warm"
    assert body["identity"] == "replica-0"
    assert body["ready"] is True
    assert body["phase"] == "serving"
    assert body["gates"] == {"deps-ready": {"open": True}}
    assert body["once"] == {"migrations": {"ran_here": True}}
    assert body["barrier"]["open"] is True
    assert body["barrier"]["arrived"] == ["replica-0"]
    assert body["leader"] == {
        "name": "jobs",
        "is_leader": True,
        "fencing_token": 0,
        "elections": 1,
        "error": None,
    }
    assert events == [
        "migrate",
        "own start (app lifespan start-up, migrations ran here: True)",
        "router start (ready: True)",
        "lead 0",
        "router stop",
        "lead cancelled",
        "own stop (leader: False)",
    ]
    assert app.state.konductor.phase == "stopped"
    assert (await setup.try_acquire_lease("jobs", ttl=3)) is not None  # released at shutdown
    await setup.close()


async def test_only_one_replica_runs_the_initialiser_and_all_pass_the_barrier(
    store: MemoryStore,
) -> None:
    ran: list[str] = []
    release = asyncio.Event()

    def app_for(i: int) -> FastAPI:
        async def migrate() -> None:
            ran.append(f"replica-{i}")
            await release.wait()

        return FastAPI(
            lifespan=konductor_lifespan(
                once={"migrations": migrate},
                barrier=("app-start", 3),
                client=factory(store, f"replica-{i}"),
            )
        )

    apps = [app_for(i) for i in range(3)]
    cms = [a.router.lifespan_context(a) for a in apps]
    async with asyncio.TaskGroup() as tg:
        entered = [tg.create_task(cm.__aenter__()) for cm in cms]
        await until(lambda: len(ran) == 1)
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in entered)  # the others wait for the migration
        release.set()
    states: list[KonductorState] = [t.result()["konductor"] for t in entered]
    assert len(ran) == 1
    assert [s.once_ran["migrations"] for s in states].count(True) == 1
    assert {s.barrier.arrived_count for s in states if s.barrier} == {3}
    for cm in cms:
        await cm.__aexit__(None, None, None)


# -- leadership ------------------------------------------------------------------------


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[KonductorState]:
    async with app.router.lifespan_context(app) as lifespan_state:
        yield lifespan_state["konductor"]


async def test_shutdown_hands_leadership_to_a_waiting_replica_at_once(store: MemoryStore) -> None:
    runs: list[tuple[str, int]] = []

    def app_for(name: str) -> FastAPI:
        async def lead(lease: Lease) -> None:
            runs.append((name, lease.token))
            await asyncio.Event().wait()

        return FastAPI(
            lifespan=konductor_lifespan(
                leader=LeaderConfig("jobs", run=lead, ttl=30), client=factory(store, name)
            )
        )

    a, b = app_for("a"), app_for("b")
    cm_a = running(a)
    state_a = await cm_a.__aenter__()
    await until(lambda: state_a.is_leader)
    async with running(b) as state_b:
        await asyncio.sleep(0.3)
        assert not state_b.is_leader
        await cm_a.__aexit__(None, None, None)  # a's shutdown
        await until(lambda: state_b.is_leader, timeout=1.0)  # a 30 s TTL: only a release does it
        assert not state_a.is_leader
        assert state_b.fencing_token == 1
        assert runs == [("a", 0), ("b", 1)]


async def test_leader_coroutine_is_cancelled_on_loss_and_restarted_on_reelection(
    store: MemoryStore,
) -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def lead(lease: Lease) -> None:
        started.append(lease.token)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(lease.token)
            raise

    app = FastAPI(
        lifespan=konductor_lifespan(
            leader=LeaderConfig("jobs", run=lead, ttl=1), client=factory(store, "replica-0")
        )
    )
    async with running(app) as state:
        await until(lambda: state.is_leader)
        # Somebody takes the Lease by hand: the next renewal (within ttl/3) finds
        # another holder, and leadership is lost at once.
        obj = await store.get(LEASE, "jobs")
        spec = {**obj.spec, "holderIdentity": "intruder", "leaseTransitions": 7}
        await store.replace_spec(LEASE, "jobs", spec, version=obj.version)
        await until(lambda: not state.is_leader, timeout=1.0)
        assert state.fencing_token is None
        await until(lambda: cancelled == [0])
        # The intruder never renews: after the TTL this replica is elected again.
        await until(lambda: state.is_leader, timeout=5.0)
        assert state.fencing_token == 8
        assert state.elections == 2
        await until(lambda: started == [0, 8])


async def test_a_failing_leader_coroutine_steps_down_and_is_restarted(
    store: MemoryStore,
) -> None:
    calls: list[int] = []

    async def lead(lease: Lease) -> None:
        calls.append(lease.token)
        if len(calls) == 1:
            raise RuntimeError("scheduler crashed")
        await asyncio.Event().wait()

    app = FastAPI(
        lifespan=konductor_lifespan(
            leader=LeaderConfig("jobs", run=lead, ttl=3, restart_delay=0.1),
            client=factory(store, "replica-0"),
        )
    )
    async with running(app) as state:
        await until(lambda: len(calls) == 2 and state.is_leader)
        assert state.leader_error == "RuntimeError('scheduler crashed')"
        assert calls == [0, 1]  # released after the crash, so the re-election is a new token


async def test_a_leader_coroutine_that_returns_keeps_leading(store: MemoryStore) -> None:
    app = FastAPI(
        lifespan=konductor_lifespan(
            leader=LeaderConfig("jobs", run=lambda lease: noop(), ttl=3),
            client=factory(store, "replica-0"),
        )
    )
    async with running(app) as state:
        await until(lambda: state.is_leader)
        await asyncio.sleep(0.2)
        assert state.is_leader
        assert state.elections == 1


# -- start-up failures -----------------------------------------------------------------


async def test_a_gate_that_stays_closed_fails_startup_naming_it(store: MemoryStore) -> None:
    app = FastAPI(
        lifespan=konductor_lifespan(
            gates=["db-ready"],
            once={"migrations": noop},
            startup_timeout=0.3,
            client=factory(store, "replica-0"),
        )
    )
    with pytest.raises(StartupTimeout) as err:
        async with running(app):
            pytest.fail("started although the gate is closed")
    assert isinstance(err.value, WaitTimeout)
    assert isinstance(err.value, TimeoutError)
    assert err.value.waiting_for == "gate 'db-ready'"
    assert "gate 'db-ready' not open within 0.3s" in str(err.value)
    assert "startup_timeout=0.3s" in str(err.value)
    status = await Client(store).once_status("migrations")
    assert status.state == "Pending"  # nothing after the gate ran


async def test_startup_timeout_counts_waiting_for_others_not_own_initialisers(
    store: MemoryStore,
) -> None:
    release = asyncio.Event()

    async def slow_migration() -> None:
        await asyncio.sleep(0.6)  # longer than startup_timeout: never cut short
        await release.wait()

    runner = FastAPI(
        lifespan=konductor_lifespan(
            once={"migrations": slow_migration},
            startup_timeout=0.3,
            client=factory(store, "runner"),
        )
    )
    waiter = FastAPI(
        lifespan=konductor_lifespan(
            once={"migrations": slow_migration},
            startup_timeout=0.3,
            client=factory(store, "waiter"),
        )
    )
    runner_cm = runner.router.lifespan_context(runner)
    run = asyncio.ensure_future(runner_cm.__aenter__())
    await asyncio.sleep(0.05)
    with pytest.raises(StartupTimeout, match="once 'migrations': still running on 'runner'"):
        await waiter.router.lifespan_context(waiter).__aenter__()
    await asyncio.sleep(0.6)
    release.set()
    state = (await run)["konductor"]
    assert state.once_ran == {"migrations": True}
    await runner_cm.__aexit__(None, None, None)


async def test_a_failing_initialiser_fails_startup_and_is_retried_by_the_next(
    store: MemoryStore,
) -> None:
    attempts: list[str] = []

    def app_for(name: str) -> FastAPI:
        async def migrate() -> None:
            attempts.append(name)
            if name == "first":
                raise RuntimeError("ALTER TABLE failed")

        return FastAPI(
            lifespan=konductor_lifespan(once={"migrations": migrate}, client=factory(store, name))
        )

    first = app_for("first")
    with pytest.raises(RuntimeError, match="ALTER TABLE failed"):
        async with running(first):
            pass
    async with running(app_for("second")) as state:
        assert state.once_ran == {"migrations": True}
    assert attempts == ["first", "second"]


async def test_a_given_client_is_not_closed_and_state_key_is_configurable(
    store: MemoryStore,
) -> None:
    client = Client(store, identity="shared")
    app = FastAPI(lifespan=konductor_lifespan(client=client, state_key="coord"))

    @app.get("/who")
    async def who(request: Request) -> dict[str, Any]:
        return {"identity": request.state.coord.identity}

    async with app.router.lifespan_context(app) as lifespan_state:
        assert await get(app, "/who", lifespan_state) == (200, {"identity": "shared"})
    # Still usable: the lifespan did not close a client it was given.
    await client.open_gate("still-works")
    await client.close()


async def test_the_dependency_says_when_the_lifespan_is_missing() -> None:
    app = FastAPI()

    @app.get("/state")
    async def state(k: KonductorStateDep) -> dict[str, Any]:
        return k.to_dict()

    with pytest.raises(RuntimeError, match="konductor_lifespan"):
        await get(app, "/state", {})


# -- the module ------------------------------------------------------------------------


def test_without_fastapi_the_error_names_the_install_command() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n"
        "    import konductor.integrations.fastapi\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'konductor[fastapi]'" in out.stdout, out.stderr


def test_public_names() -> None:
    import konductor.integrations.fastapi as module

    assert set(module.__all__) == {
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
    }
    for name in module.__all__:
        assert hasattr(module, name)
