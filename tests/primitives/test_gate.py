"""The gate on every store: manual open/close, and Barrier / Once / Job conditions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from konductor import Client, InvalidArgument, InvalidName, NotFound, WaitTimeout
from konductor._engine._clock import settle
from konductor._primitives._gate import GateInfo
from konductor._primitives._gate_state import GateCondition
from konductor.store import GATE, JOB, ONCE, MemoryStore
from konductor.testing import FakeClock
from tests.store.conftest import Backend

Clients = Callable[..., Client]


async def still_waiting(*tasks: asyncio.Future[Any], rounds: int = 6) -> None:
    """Assert, several times over a while, that none of ``tasks`` has finished."""
    for _ in range(rounds):
        await asyncio.sleep(0.05)
        for task in tasks:
            assert not task.done(), task.result() if not task.cancelled() else "cancelled"


async def set_once_state(backend: Backend, name: str, state: str) -> None:
    """Write a Once's status directly, as the once primitive would."""
    try:
        obj = await backend.store.get(ONCE, name)
    except NotFound:
        obj = await backend.store.create(ONCE, name, {})
    await backend.store.replace_status(
        ONCE, name, {**obj.status, "state": state}, version=obj.version
    )


class Jobs:
    """batch/v1 Jobs: real ones on the API server (no controller runs there), else JOB objects."""

    def __init__(self, backend: Backend, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self.env = request.getfixturevalue("kube_crds") if backend.name == "kubernetes" else None

    def _path(self, name: str = "") -> str:
        ns = self.backend.store.namespace
        return f"/apis/batch/v1/namespaces/{ns}/jobs" + (f"/{name}" if name else "")

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        assert self.env is not None
        resp = await asyncio.to_thread(self.env.request, method, path, body)
        assert resp.status in (200, 201), (resp.status, resp.body[:500])
        return resp.json()

    async def create(self, name: str) -> None:
        if self.env is None:
            await self.backend.store.create(JOB, name, {"template": {}})
            return
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "work", "image": "busybox"}],
                        "restartPolicy": "Never",
                    }
                }
            },
        }
        await self._request("POST", self._path(), job)

    async def set_conditions(self, name: str, *types: str) -> None:
        now = "2026-01-01T00:00:00Z"
        conditions = [
            {"type": t, "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
            for t in types
        ]
        if self.env is None:
            obj = await self.backend.store.get(JOB, name)
            await self.backend.store.replace_status(
                JOB, name, {"conditions": conditions}, version=obj.version
            )
            return
        job = await self._request("GET", self._path(name))
        job["status"] = {"conditions": conditions, "startTime": now}
        if "Complete" in types:
            job["status"].update(succeeded=1, completionTime=now)
        await self._request("PUT", self._path(name) + "/status", job)


async def test_wait_gate_creates_it_closed_and_open_lets_every_waiter_through(
    clients: Clients, backend: Backend
) -> None:
    a, b, opener = clients(), clients(), clients()
    waiters = [asyncio.ensure_future(c.wait_gate("release", timeout=60)) for c in (a, a, b)]
    for _ in range(100):
        await asyncio.sleep(0.02)
        try:
            if "open" in (await backend.store.get(GATE, "release")).status:
                break
        except NotFound:
            pass
    obj = await backend.store.get(GATE, "release")
    assert obj.status == {"open": False}
    assert obj.spec == {}
    await still_waiting(*waiters)
    await opener.open_gate("release")
    infos = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert all(i.open and i.flag for i in infos)
    obj = await backend.store.get(GATE, "release")
    assert obj.status["open"] is True
    assert obj.status["changedBy"] == opener.identity
    # Open stays open for later waiters; closing makes them wait again.
    assert (await b.wait_gate("release", timeout=5)).open
    await opener.close_gate("release")
    with pytest.raises(WaitTimeout) as info:
        await a.wait_gate("release", timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert "gate 'release' not open within 0.3s" in str(info.value)
    assert "open_gate('release')" in str(info.value)
    status = await a.gate_status("release")
    assert status == GateInfo("release", open=False, flag=False, conditions=())


async def test_open_and_close_are_idempotent_and_never_decided_on_a_stale_copy(
    clients: Clients, backend: Backend
) -> None:
    a, b = clients(), clients()
    await a.close_gate("flag")  # created closed
    assert (await backend.store.get(GATE, "flag")).status["open"] is False
    await a.open_gate("flag")
    opened = await backend.store.get(GATE, "flag")
    await a.open_gate("flag")
    assert (await backend.store.get(GATE, "flag")).version == opened.version
    # b closes; a's cached copy still says open, yet a's open must reopen it.
    await b.close_gate("flag")
    await a.open_gate("flag")
    assert (await backend.store.get(GATE, "flag")).status["open"] is True
    await b.close_gate("flag")
    await b.close_gate("flag")
    assert (await b.gate_status("flag")).open is False


async def test_barrier_condition_opens_the_gate_only_when_the_barrier_opens(
    clients: Clients, backend: Backend
) -> None:
    cs = [clients() for _ in range(3)]
    created = await cs[0].create_gate("deploy", conditions=[GateCondition.barrier("ready")])
    assert created.open is False
    assert created.conditions[0].detail == "barrier 'ready' open (it does not exist)"
    obj = await backend.store.get(GATE, "deploy")
    assert obj.spec == {"conditions": [{"type": "Barrier", "name": "ready"}]}
    waiters = [asyncio.ensure_future(c.wait_gate("deploy", timeout=60)) for c in cs]
    await cs[0].arrive_barrier("ready", expected=3)
    await cs[1].arrive_barrier("ready")
    await still_waiting(*waiters)  # 2 of 3 arrived: the gate is still closed
    with pytest.raises(WaitTimeout, match=r"barrier 'ready' open \(2 arrived\)"):
        await cs[2].wait_gate("deploy", timeout=0.2)
    await cs[2].arrive_barrier("ready")
    infos = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    for info in infos:
        assert info.open
        assert not info.flag  # opened by its condition, not by hand
        assert info.pending == ()
    # The gate's own status is untouched by waiters.
    assert (await backend.store.get(GATE, "deploy")).status == {"open": False}


async def test_once_condition_opens_the_gate_when_the_once_is_done(
    clients: Clients, backend: Backend
) -> None:
    a = clients()
    waiter = asyncio.ensure_future(
        a.wait_gate("after-migration", conditions=[{"type": "Once", "name": "migrate"}], timeout=60)
    )
    await still_waiting(waiter)  # no such Once yet
    await set_once_state(backend, "migrate", "Running")
    await still_waiting(waiter)
    await set_once_state(backend, "migrate", "Failed")
    await still_waiting(waiter)
    await set_once_state(backend, "migrate", "Done")
    info = await asyncio.wait_for(waiter, 30)
    assert info.open
    assert info.conditions[0].detail == "once 'migrate' done (state Done)"


async def test_job_condition_opens_the_gate_when_the_job_completes(
    clients: Clients, backend: Backend, request: pytest.FixtureRequest
) -> None:
    jobs = Jobs(backend, request)
    a, b = clients(), clients()
    await a.create_gate("after-job", conditions=[GateCondition.job("import")])
    waiters = [asyncio.ensure_future(c.wait_gate("after-job", timeout=60)) for c in (a, b)]
    await still_waiting(*waiters)  # no such Job yet
    await jobs.create("import")
    await still_waiting(*waiters)
    await jobs.set_conditions("import", "Failed")
    await still_waiting(*waiters)
    with pytest.raises(WaitTimeout, match=r"job 'import' complete \(Failed\)"):
        await b.wait_gate("after-job", timeout=0.2)
    await jobs.set_conditions("import", "Complete")
    infos = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert all(i.open for i in infos)
    assert (await b.gate_status("after-job")).open


async def test_every_condition_must_hold_and_the_flag_overrides_them(
    clients: Clients, backend: Backend, request: pytest.FixtureRequest
) -> None:
    a, b = clients(), clients()
    conds = [GateCondition.barrier("b1"), GateCondition.once("o1"), GateCondition.job("j1")]
    await a.create_gate("all", conditions=conds)
    await a.arrive_barrier("b1", expected=1)
    await set_once_state(backend, "o1", "Done")
    with pytest.raises(WaitTimeout) as info:
        await b.wait_gate("all", timeout=0.3)
    message = str(info.value)
    assert "barrier 'b1' open (open)" in message
    assert "once 'o1' done (state Done)" in message
    assert "job 'j1' complete (it does not exist)" in message
    status = await b.gate_status("all")
    assert [c.met for c in status.conditions] == [True, True, False]
    assert [c.condition for c in status.pending] == [GateCondition.job("j1")]
    waiter = asyncio.ensure_future(b.wait_gate("all", timeout=60))
    await still_waiting(waiter)
    await a.open_gate("all")  # by hand, although a condition is unmet
    assert (await asyncio.wait_for(waiter, 30)).flag


async def test_conditions_edited_while_waiting_take_effect(
    clients: Clients, backend: Backend
) -> None:
    a = clients()
    await a.arrive_barrier("done-already", expected=1)
    waiter = asyncio.ensure_future(a.wait_gate("edited", timeout=60))
    await still_waiting(waiter)
    obj = await backend.store.get(GATE, "edited")
    # kubectl edit gate edited: add a condition that is already met.
    spec = {"conditions": [{"type": "Barrier", "name": "done-already"}]}
    await backend.store.replace_spec(GATE, "edited", spec, version=obj.version)
    info = await asyncio.wait_for(waiter, 30)
    assert info.open
    assert not info.flag


async def test_cluster_conditions_win_and_a_mismatch_is_logged(
    clients: Clients, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = clients(), clients()
    await a.create_gate("mine", conditions=[GateCondition.barrier("x")])
    with caplog.at_level(logging.WARNING, logger="konductor"):
        info = await b.create_gate("mine", conditions=[GateCondition.once("y")])
    assert [c.condition for c in info.conditions] == [GateCondition.barrier("x")]
    assert "gate 'mine' has conditions [Barrier 'x'] in the cluster" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="konductor"):
        await b.create_gate("mine", conditions=[{"type": "barrier", "name": "x"}])
    assert caplog.text == ""


async def test_missing_gate_status_and_cancelled_wait(clients: Clients, backend: Backend) -> None:
    a = clients()
    with pytest.raises(NotFound):
        await a.gate_status("ghost")
    task = asyncio.ensure_future(a.wait_gate("ghost", conditions=[GateCondition.job("j")]))
    await still_waiting(task)
    before = await backend.store.get(GATE, "ghost")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hubs = a._rt._hubs
    assert all(h._watchers == 0 for h in hubs.values())
    assert (await backend.store.get(GATE, "ghost")).version == before.version


BAD: list[tuple[Callable[[Client], Awaitable[object]], type]] = [
    (lambda c: c.wait_gate("g", conditions=[{"type": "Pod", "name": "p"}]), InvalidArgument),
    (lambda c: c.wait_gate("g", conditions={"type": "Job", "name": "j"}), InvalidArgument),
    (lambda c: c.create_gate("g", conditions=[GateCondition.job("Bad_Name")]), InvalidName),
    (lambda c: c.create_gate("g", conditions="Barrier"), InvalidArgument),
    (lambda c: c.wait_gate("g", timeout=-1), InvalidArgument),
    (lambda c: c.open_gate("Bad_Name"), InvalidName),
    (lambda c: c.close_gate(""), InvalidName),
    (lambda c: c.gate_status("Bad_Name"), InvalidName),
]


@pytest.mark.parametrize(("call", "error"), BAD)
async def test_bad_arguments_fail_before_any_call(
    call: Callable[[Client], Awaitable[object]], error: type
) -> None:
    store = MemoryStore()
    with pytest.raises(error):
        await call(Client(store))
    assert store._revision == 0


async def test_wait_gate_times_out_exactly_at_its_timeout_on_a_fake_clock() -> None:
    store, clock = MemoryStore(), FakeClock()
    a = Client(store, clock=clock)
    conds = [GateCondition.barrier("b"), GateCondition.once("o")]
    waiter = asyncio.ensure_future(a.wait_gate("timed", conditions=conds, timeout=10))
    await settle()
    await clock.advance(9.9)
    assert not waiter.done()
    await clock.advance(0.1)
    with pytest.raises(WaitTimeout, match="within 10s"):
        await asyncio.wait_for(waiter, 5)
    # Released by a condition before its deadline, with no time passing.
    waiter = asyncio.ensure_future(a.wait_gate("timed", timeout=10))
    await settle()
    await a.arrive_barrier("b", expected=1)
    await settle()
    assert not waiter.done()
    await store.create(ONCE, "o", {})
    obj = await store.get(ONCE, "o")
    await store.replace_status(ONCE, "o", {"state": "Done"}, version=obj.version)
    assert (await asyncio.wait_for(waiter, 5)).open
    await a._rt.close()
