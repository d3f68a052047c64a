"""SyncClient is the twin of Client: the same methods, with the same parameters."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from pathlib import Path

import pytest

from konductor import Client, InvalidArgument, LocalStore, SyncClient, SyncGrant
from konductor._primitives._lease import Lease

#: Parameters a SyncClient method has on top of its twin's, and why.
SYNC_EXTRAS = {"close": {"timeout"}}  # bounds the blocking wait for the releases

#: The twins written by hand, and the parameter whose type differs, and why: each
#: takes a callback, which blocking code gives as a plain function (an async twin
#: takes an async one). Every other twin is derived from the async method.
HAND_WRITTEN = {"campaign": "leader_fn", "once": "fn", "close": None}


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


def test_every_public_method_of_client_has_a_sync_twin_with_the_same_parameters() -> None:
    async_methods = public_methods(Client)
    sync_methods = public_methods(SyncClient)
    assert "campaign" in async_methods
    missing = sorted(set(async_methods) - set(sync_methods))
    assert missing == [], f"SyncClient lacks {missing}"
    for name, signature in async_methods.items():
        twin = sync_methods[name]
        extras = SYNC_EXTRAS.get(name, set())
        ours = [
            (p.name, p.kind, p.default) for p in twin.parameters.values() if p.name not in extras
        ]
        theirs = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        assert ours == theirs, f"SyncClient.{name}{twin} differs from Client.{name}{signature}"


def test_every_twin_has_the_same_parameter_types_and_is_derived_unless_it_takes_a_callback() -> (
    None
):
    async_methods = public_methods(Client)
    sync_methods = public_methods(SyncClient)
    assert set(HAND_WRITTEN) <= set(async_methods)
    for name, signature in async_methods.items():
        twin = sync_methods[name]
        callback = HAND_WRITTEN.get(name)
        member = inspect.getattr_static(SyncClient, name)
        if name in HAND_WRITTEN:
            assert not hasattr(member, "__wrapped__"), f"SyncClient.{name} is not hand-written"
        else:
            # Derived: it calls the async method itself, so it cannot drift from it.
            assert member.__wrapped__ is inspect.getattr_static(Client, name), name
        extras = SYNC_EXTRAS.get(name, set())
        ours = {
            p.name: p.annotation
            for p in twin.parameters.values()
            if p.name not in extras and p.name != callback
        }
        theirs = {p.name: p.annotation for p in signature.parameters.values() if p.name != callback}
        ours.pop("self")
        theirs.pop("self")
        assert ours == theirs, f"SyncClient.{name}{twin} types differ from Client.{name}{signature}"


@pytest.mark.parametrize(
    ("name", "returns"),
    [
        ("semaphore", "SyncGuard[Permit]"),
        ("acquire_semaphore", "SyncGrant[Permit]"),
        ("try_acquire_semaphore", "SyncGrant[Permit] | None"),
        ("lease", "SyncGuard[Lease]"),
        ("try_acquire_lease", "SyncGrant[Lease] | None"),
        ("gate_status", "GateInfo"),
        ("delete", "None"),
    ],
)
def test_a_derived_twin_shows_what_it_returns_and_whose_twin_it_is(name: str, returns: str) -> None:
    twin = getattr(SyncClient, name)
    assert inspect.signature(twin).return_annotation == returns
    assert twin.__name__ == name
    assert twin.__doc__.startswith(f"The blocking twin of :meth:`Client.{name}`")


def test_a_derived_twin_checks_its_arguments_as_the_async_method_does(tmp_path: Path) -> None:
    with SyncClient(lambda: LocalStore(tmp_path / "k.db")) as client:
        with pytest.raises(InvalidArgument) as raised:
            client.acquire_semaphore("sem", 2, count=3)
        assert str(raised.value) == "count=3 is more than permits=2"
        assert raised.value.argument == "count"
        with pytest.raises(InvalidArgument) as raised, client.mutex("m", ttl=0.5):
            pass  # pragma: no cover - the guard's entry raises
        assert raised.value.argument == "ttl"
        with pytest.raises(TypeError):
            client.gate_status("g", "extra")  # type: ignore[call-arg]


def test_sync_campaign_returns_the_leaders_result_and_releases(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with SyncClient(lambda: LocalStore(db)) as a, SyncClient(lambda: LocalStore(db)) as b:
        seen: list[int] = []

        def lead(lease: SyncGrant[Lease]) -> str:
            lease.ensure_held()
            seen.append(lease.token)
            return "done"

        assert a.campaign("beat", lead, ttl=3) == "done"
        assert len(seen) == 1
        assert b.try_acquire_lease("beat", ttl=3) is not None  # released at once
        with pytest.raises(InvalidArgument):
            a.campaign("beat", "not a function")  # type: ignore[arg-type]


def test_sync_campaign_leads_again_after_losing_the_lease(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    calls: list[int] = []

    def lead(lease: SyncGrant[Lease]) -> str:
        calls.append(lease.token)
        if len(calls) == 2:
            return "second term"
        while True:  # blocking leader work, checking leadership between steps
            lease.ensure_held()  # raises LeaseLost once the lease is gone
            time.sleep(0.05)

    with SyncClient(lambda: LocalStore(db)) as leader, SyncClient(lambda: LocalStore(db)) as ops:
        result: list[str] = []
        runner = threading.Thread(
            target=lambda: result.append(leader.campaign("beat", lead, ttl=3))
        )
        runner.start()
        deadline = time.monotonic() + 30
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ops.delete("lease", "beat")  # an operator resets the lease: the leader loses it
        runner.join(timeout=30)
        assert not runner.is_alive()
    assert result == ["second term"]
    assert len(calls) == 2
    # (No token comparison: deleting the Lease restarted its leaseTransitions.)


def test_a_wrong_call_raises_type_error_at_once_without_starting_the_client() -> None:
    def no_store() -> LocalStore:
        raise AssertionError("the client must not start for a call that cannot bind")

    client = SyncClient(no_store)
    with pytest.raises(TypeError):
        client.gate_status()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        client.semaphore("sem", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        client.try_acquire_mutex("m", 15)  # type: ignore[misc]
    with pytest.raises(TypeError):
        client.acquire_lease()  # type: ignore[call-arg]
    assert client._portal is None  # nothing started
    client.close()


def test_closing_cancels_the_tasks_left_on_its_loop_before_closing_it() -> None:
    # A task left on the loop (an Event being sent, say) must end, not stay pending on a
    # closed loop forever where nothing can await or collect it.
    from konductor import MemoryStore

    client = SyncClient(MemoryStore)
    with client.semaphore("warm", permits=1):  # starts the loop thread
        pass
    portal = client._portal
    assert portal is not None

    async def forever() -> None:
        await asyncio.Event().wait()

    async def start() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(forever())

    task = asyncio.run_coroutine_threadsafe(start(), portal.loop).result(5)
    client.close()
    assert portal.loop.is_closed()
    assert task.cancelled()
