"""``Client.delete(kind, name)`` resets any primitive's object, on every store."""

from __future__ import annotations

from typing import Any

import pytest

from konductor import Client, InvalidArgument, InvalidName, NotFound
from konductor._store._kinds import PRIMITIVE_KINDS
from tests.store.conftest import Backend
from tests.store.conftest import backend as backend


async def make_one_of_each(client: Client) -> None:
    await client.try_acquire_semaphore("sem", 2)
    await client.try_acquire_mutex("mtx")
    await client.acquire_read_lock("rw")
    await client.arrive_barrier("bar", 1, party="p")
    await client.create_gate("gate")
    await client.once("once", _nothing)
    await client.waitgroup_add("wg", 1)
    await client.try_acquire_lease("lease")
    await client.acquire_rate_limit("rl", 10)


async def _nothing() -> str:
    return "ran"


async def test_delete_removes_every_kind_and_a_barrier_can_be_met_again(backend: Backend) -> None:
    async with Client(backend.store) as client:
        await make_one_of_each(client)
        names = {"semaphore": "sem", "mutex": "mtx", "rwmutex": "rw", "barrier": "bar"}
        names |= {"gate": "gate", "once": "once", "waitgroup": "wg", "lease": "lease"}
        names |= {"ratelimit": "rl"}
        assert set(names) == set(PRIMITIVE_KINDS)
        for kind, name in names.items():
            await backend.store.get(PRIMITIVE_KINDS[kind], name)  # exists
            await client.delete(kind, name)
            with pytest.raises(NotFound):
                await backend.store.get(PRIMITIVE_KINDS[kind], name)
            with pytest.raises(NotFound):
                await client.delete(kind, name)
        # The reset docs/barrier.md describes: the barrier opens again for new parties.
        info = await client.arrive_and_wait("bar", 1, party="q", timeout=10)
        assert info.open
        # A once forgotten runs again.
        assert await client.once("once", _nothing) == "ran"


async def test_delete_checks_its_arguments_before_any_call() -> None:
    from konductor import MemoryStore

    async with Client(MemoryStore()) as client:
        with pytest.raises(InvalidArgument, match="not a konductor primitive"):
            await client.delete("semaphores", "x")
        with pytest.raises(InvalidName):
            await client.delete("semaphore", "Not_A_Name")


async def test_a_closed_client_says_so_instead_of_blaming_the_store(tmp_path: Any) -> None:
    # docs/gate.md once called open_gate after leaving `async with Client()`:
    # the local store answered StoreUnavailable "is closed", which reads as an
    # outage to retry. It is the caller's mistake, and says how to fix it.
    from konductor import ClientClosed, LocalStore, StoreUnavailable, SyncClient

    async with Client(LocalStore(tmp_path / "k.db")) as client:
        await client.open_gate("g")
    for call in (
        lambda: client.open_gate("g"),
        lambda: client.try_acquire_semaphore("s", 1),
        lambda: client.arrive_barrier("b", 2),
        lambda: client.delete("gate", "g"),
        lambda: client.once_status("o"),
    ):
        with pytest.raises(ClientClosed, match="is closed; call its methods inside") as caught:
            await call()
        assert not isinstance(caught.value, StoreUnavailable)
    with SyncClient(lambda: LocalStore(tmp_path / "k.db")) as sync:
        sync.open_gate("g")
    with pytest.raises(ClientClosed):
        sync.open_gate("g")
