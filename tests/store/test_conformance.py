"""The store conformance suite: one set of tests, every backend.

These are the properties every primitive relies on; the Kubernetes backend runs
them against a real kube-apiserver and etcd, never a mock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest

from konductor import AlreadyExists, Conflict, Invalid, InvalidArgument, InvalidName, NotFound
from konductor.store import BARRIER, LEASE, SEMAPHORE, Store, StoredObject, WatchEvent
from tests.store.conftest import Backend

WAIT = 30.0  # generous upper bound for an expected event; never a speed claim


class Reader:
    """Drains a watch stream in the background from the moment it opens.

    The stream is consumed continuously (as a primitive waiting on it would),
    and tests take events from the queue with generous time limits.
    """

    def __init__(self, watch: AbstractAsyncContextManager[AsyncIterator[WatchEvent]]) -> None:
        self._watch = watch
        self._queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        events = await self._watch.__aenter__()

        async def pump() -> None:
            async for ev in events:
                self._queue.put_nowait(ev)

        self._task = asyncio.ensure_future(pump())
        await asyncio.sleep(0.2)  # let the stream open before the test writes
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._watch.__aexit__(None, None, None)

    async def _read(self, timeout: float) -> WatchEvent | None:
        assert self._task is not None
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            {getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._task in done:
            self._task.result()  # the stream failed: raise its error
            pytest.fail("the watch stream ended")
        return None

    async def take(self, count: int) -> list[WatchEvent]:
        out = []
        for _ in range(count):
            ev = await self._read(WAIT)
            if ev is None:
                pytest.fail(f"expected {count} events, got {len(out)}: {out}")
            out.append(ev)
        return out

    async def assert_quiet(self, seconds: float = 0.5) -> None:
        """No further event arrives within ``seconds`` (no duplicates were queued)."""
        ev = await self._read(seconds)
        if ev is not None:
            pytest.fail(f"unexpected extra event: {ev}")


async def test_create_get_and_duplicate_create(backend: Backend) -> None:
    store = backend.store
    created = await store.create(SEMAPHORE, "sem-a", {"permits": 3})
    assert created.name == "sem-a"
    assert created.spec == {"permits": 3}
    assert created.status == {}
    assert created.version
    got = await store.get(SEMAPHORE, "sem-a")
    assert got.version == created.version
    assert got.spec == {"permits": 3}
    with pytest.raises(AlreadyExists):
        await store.create(SEMAPHORE, "sem-a", {"permits": 5})
    assert (await store.get(SEMAPHORE, "sem-a")).spec == {"permits": 3}
    with pytest.raises(NotFound):
        await store.get(SEMAPHORE, "missing")


async def test_replace_with_stale_version_conflicts(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "sem-b", {"permits": 1})
    first = await store.replace_status(SEMAPHORE, "sem-b", {"note": ["x"]}, version=obj.version)
    assert first.version != obj.version
    with pytest.raises(Conflict):
        await store.replace_status(SEMAPHORE, "sem-b", {"note": ["y"]}, version=obj.version)
    with pytest.raises(Conflict):
        await store.replace_spec(SEMAPHORE, "sem-b", {"permits": 9}, version=obj.version)
    now = await store.get(SEMAPHORE, "sem-b")
    assert now.status == {"note": ["x"]}
    assert now.spec == {"permits": 1}


async def test_status_and_spec_are_written_separately(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "sem-c", {"permits": 2})
    obj = await store.replace_status(SEMAPHORE, "sem-c", {"inUse": 1}, version=obj.version)
    obj = await store.replace_spec(SEMAPHORE, "sem-c", {"permits": 4}, version=obj.version)
    assert obj.spec == {"permits": 4}
    assert obj.status == {"inUse": 1}
    obj = await store.replace_status(SEMAPHORE, "sem-c", {"inUse": 2}, version=obj.version)
    assert (await store.get(SEMAPHORE, "sem-c")).spec == {"permits": 4}


async def test_returned_objects_are_caller_owned(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "sem-own", {"permits": 2})
    obj.spec["permits"] = 99
    assert (await store.get(SEMAPHORE, "sem-own")).spec == {"permits": 2}


async def _increment(store: Store, name: str, times: int) -> int:
    conflicts = 0
    for _ in range(times):
        while True:
            obj = await store.get(SEMAPHORE, name)
            value = obj.status.get("counter", 0)
            try:
                await store.replace_status(
                    SEMAPHORE, name, {**obj.status, "counter": value + 1}, version=obj.version
                )
                break
            except Conflict:
                conflicts += 1
    return conflicts


async def test_twenty_concurrent_cas_writers_lose_no_increment(backend: Backend) -> None:
    """20 writers x 10 increments through compare-and-swap retry: exactly 200."""
    obj = await backend.store.create(SEMAPHORE, "counter", {"permits": 1})
    await backend.store.replace_status(SEMAPHORE, "counter", {"counter": 0}, version=obj.version)
    clients = [backend.store] + [backend.another() for _ in range(3)]
    results = await asyncio.gather(
        *(_increment(clients[i % len(clients)], "counter", 10) for i in range(20))
    )
    final = await backend.store.get(SEMAPHORE, "counter")
    assert final.status["counter"] == 200
    # The writers really contended: the compare-and-swap rejected stale writes.
    assert sum(results) > 0


async def test_delete_with_and_without_precondition(backend: Backend) -> None:
    store = backend.store
    old = await store.create(BARRIER, "bar-a", {"expected": 2})
    new = await store.replace_status(
        BARRIER, "bar-a", {"arrived": [{"identity": "p1"}]}, version=old.version
    )
    with pytest.raises(Conflict):
        await store.delete(BARRIER, "bar-a", version=old.version)
    assert (await store.get(BARRIER, "bar-a")).version == new.version
    await store.delete(BARRIER, "bar-a", version=new.version)
    with pytest.raises(NotFound):
        await store.get(BARRIER, "bar-a")
    await store.create(BARRIER, "bar-b", {"expected": 1})
    await store.delete(BARRIER, "bar-b")
    with pytest.raises(NotFound):
        await store.get(BARRIER, "bar-b")
    with pytest.raises(NotFound):
        await store.delete(BARRIER, "bar-b")


async def test_list_and_watch_from_list_version(backend: Backend) -> None:
    store = backend.store
    for n in ("l-b", "l-a", "l-c"):
        await store.create(SEMAPHORE, n, {"permits": 1})
    await store.create(BARRIER, "other-kind", {"expected": 1})
    listed = await store.list(SEMAPHORE)
    assert [o.name for o in listed.items] == ["l-a", "l-b", "l-c"]
    async with Reader(store.watch(SEMAPHORE, since=listed.version)) as events:
        await store.create(SEMAPHORE, "l-d", {"permits": 1})
        b = await store.get(SEMAPHORE, "l-b")
        await store.replace_status(SEMAPHORE, "l-b", {"inUse": 1}, version=b.version)
        await store.delete(SEMAPHORE, "l-a")
        got = await events.take(3)
    assert [(e.type, e.object.name) for e in got] == [
        ("ADDED", "l-d"),
        ("MODIFIED", "l-b"),
        ("DELETED", "l-a"),
    ]
    assert got[1].object.status == {"inUse": 1}


async def test_watch_delivers_every_change_in_order_after_a_version(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "w-a", {"permits": 1})
    start = obj.version
    writer = backend.another()
    for i in range(1, 11):  # changes made before the watch starts...
        obj = await writer.replace_status(SEMAPHORE, "w-a", {"n": i}, version=obj.version)
    async with Reader(store.watch(SEMAPHORE, name="w-a", since=start)) as events:
        for i in range(11, 21):  # ...and while it runs
            obj = await writer.replace_status(SEMAPHORE, "w-a", {"n": i}, version=obj.version)
        await writer.delete(SEMAPHORE, "w-a")
        got = await events.take(21)
        await events.assert_quiet()
    assert [e.object.status.get("n") for e in got[:20]] == list(range(1, 21))
    assert all(e.type == "MODIFIED" for e in got[:20])
    assert got[20].type == "DELETED"
    versions = [int(e.object.version) for e in got]
    assert versions == sorted(versions)


async def test_watch_by_name_ignores_other_objects(backend: Backend) -> None:
    store = backend.store
    a = await store.create(SEMAPHORE, "n-a", {"permits": 1})
    b = await store.create(SEMAPHORE, "n-b", {"permits": 1})
    async with Reader(store.watch(SEMAPHORE, name="n-a", since=b.version)) as events:
        await store.replace_status(SEMAPHORE, "n-b", {"x": 1}, version=b.version)
        await store.replace_status(SEMAPHORE, "n-a", {"x": 2}, version=a.version)
        (ev,) = await events.take(1)
        assert (ev.object.name, ev.object.status) == ("n-a", {"x": 2})
        await events.assert_quiet()


async def test_watch_recovers_after_the_version_was_compacted(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "exp-a", {"permits": 1})
    seen = obj
    gone = await store.create(SEMAPHORE, "exp-gone", {"permits": 1})
    since = gone.version
    for i in range(1, 6):
        obj = await store.replace_status(SEMAPHORE, "exp-a", {"n": i}, version=obj.version)
    await store.delete(SEMAPHORE, "exp-gone")
    backend.compact()  # the store forgets every version before now
    async with Reader(store.watch(SEMAPHORE, since=since, seen=[seen, gone])) as events:
        recovered = {(e.type, e.object.name): e for e in await events.take(2)}
        assert set(recovered) == {("MODIFIED", "exp-a"), ("DELETED", "exp-gone")}
        # Intermediate states collapse to the latest one.
        assert recovered["MODIFIED", "exp-a"].object.status == {"n": 5}
        obj = await store.replace_status(SEMAPHORE, "exp-a", {"n": 6}, version=obj.version)
        (live,) = await events.take(1)
        assert (live.type, live.object.status) == ("MODIFIED", {"n": 6})
        await events.assert_quiet()


async def test_recovered_watch_tracks_known_deletions(backend: Backend) -> None:
    store = backend.store
    seen = await store.create(SEMAPHORE, "exp-del", {"permits": 1})
    await store.delete(SEMAPHORE, "exp-del")
    backend.compact()
    async with Reader(
        store.watch(SEMAPHORE, name="exp-del", since=seen.version, seen=[seen])
    ) as events:
        (ev,) = await events.take(1)
        assert (ev.type, ev.object.name) == ("DELETED", "exp-del")
        await events.assert_quiet()


async def test_watch_without_changes_after_compaction_delivers_nothing(backend: Backend) -> None:
    store = backend.store
    obj = await store.create(SEMAPHORE, "exp-still", {"permits": 1})
    backend.compact()
    async with Reader(
        store.watch(SEMAPHORE, name="exp-still", since=obj.version, seen=[obj])
    ) as events:
        await events.assert_quiet(1.0)
        obj = await store.replace_status(SEMAPHORE, "exp-still", {"n": 1}, version=obj.version)
        (ev,) = await events.take(1)
        assert ev.object.status == {"n": 1}


async def test_schema_violation_is_invalid_and_names_the_field(backend: Backend) -> None:
    with pytest.raises(Invalid) as info:
        await backend.store.create(SEMAPHORE, "bad-permits", {"permits": 0})
    assert "spec.permits" in info.value.fields
    assert "spec.permits" in str(info.value)
    with pytest.raises(NotFound):
        await backend.store.get(SEMAPHORE, "bad-permits")
    obj = await backend.store.create(SEMAPHORE, "good-permits", {"permits": 1})
    with pytest.raises(Invalid) as info:
        await backend.store.replace_spec(
            SEMAPHORE, "good-permits", {"permits": "many"}, version=obj.version
        )
    assert "spec.permits" in info.value.fields


@pytest.mark.parametrize("name", ["", "Payments", "a" * 254, "under_score", "-lead", "trail-"])
async def test_invalid_names_rejected_before_any_api_call(backend: Backend, name: str) -> None:
    store = backend.store
    before = getattr(store, "api_requests", 0)
    with pytest.raises(InvalidName) as info:
        await store.get(SEMAPHORE, name)
    assert "DNS-1123" in str(info.value)
    with pytest.raises(InvalidName):
        await store.create(SEMAPHORE, name, {"permits": 1})
    assert getattr(store, "api_requests", 0) == before


async def test_lease_kind_round_trips_client_go_fields(backend: Backend) -> None:
    spec = {
        "holderIdentity": "pod-a_123_abcd",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-26T04:00:00.000000Z",
        "renewTime": "2026-11-26T04:00:05.123456Z",
        "leaseTransitions": 0,
    }
    obj = await backend.store.create(LEASE, "leader", spec)
    assert obj.spec == spec
    with pytest.raises(InvalidArgument):
        await backend.store.replace_status(LEASE, "leader", {"x": 1}, version=obj.version)
    changed = {**spec, "holderIdentity": "pod-b", "leaseTransitions": 1}
    obj2 = await backend.store.replace_spec(LEASE, "leader", changed, version=obj.version)
    assert obj2.spec == changed
    with pytest.raises(Conflict):
        await backend.store.replace_spec(LEASE, "leader", spec, version=obj.version)


def _names(objs: tuple[StoredObject, ...]) -> list[str]:
    return [o.name for o in objs]


async def test_objects_are_isolated_by_kind(backend: Backend) -> None:
    await backend.store.create(SEMAPHORE, "same-name", {"permits": 1})
    await backend.store.create(BARRIER, "same-name", {"expected": 3})
    assert (await backend.store.get(BARRIER, "same-name")).spec == {"expected": 3}
    assert _names((await backend.store.list(SEMAPHORE)).items) == ["same-name"]


# --- Guarded JSON Patch of the status (patch_status) -----------------------------------


async def _with_status(store: Store, name: str, status: dict[str, object]) -> StoredObject:
    obj = await store.create(SEMAPHORE, name, {"permits": 2})
    return await store.replace_status(SEMAPHORE, name, status, version=obj.version)


async def test_patch_applies_to_the_current_state_not_the_version_read(backend: Backend) -> None:
    """A patch has no version precondition: a change it does not test does not stop it."""
    store = backend.store
    obj = await _with_status(store, "p-current", {"note": ["a"], "inUse": 0})
    other = backend.another()
    await other.replace_status(
        SEMAPHORE, "p-current", {"note": ["a"], "inUse": 1}, version=obj.version
    )
    patched = await store.patch_status(
        SEMAPHORE,
        "p-current",
        [
            {"op": "test", "path": "/status/note/0", "value": "a"},
            {"op": "add", "path": "/status/note/-", "value": "b"},
        ],
    )
    assert patched.status == {"note": ["a", "b"], "inUse": 1}
    assert (await store.get(SEMAPHORE, "p-current")).status == patched.status


async def test_a_failed_test_is_a_conflict_and_applies_nothing(backend: Backend) -> None:
    store = backend.store
    obj = await _with_status(store, "p-test", {"note": ["a"], "inUse": 0})
    for ops in (
        [{"op": "test", "path": "/status/note", "value": ["x"]}],
        [{"op": "test", "path": "/status/missing", "value": 1}],
        [{"op": "test", "path": "/spec/permits", "value": 3}],
        # A path that does not fit the object as it is: decided on another state.
        [{"op": "remove", "path": "/status/note/7"}],
        [{"op": "add", "path": "/status/gone/-", "value": 1}],
    ):
        with pytest.raises(Conflict):
            await store.patch_status(
                SEMAPHORE, "p-test", [*ops, {"op": "replace", "path": "/status/inUse", "value": 1}]
            )
    now = await store.get(SEMAPHORE, "p-test")
    assert now.version == obj.version
    assert now.status == {"note": ["a"], "inUse": 0}


async def test_patch_tests_compare_numbers_as_the_api_server_stores_them(
    backend: Backend,
) -> None:
    """A float written as 15.0 tests equal to 15 (how every store writes it back)."""
    store = backend.store
    await _with_status(store, "p-num", {"entry": {"ttlSeconds": 15.0, "count": 1}})
    patched = await store.patch_status(
        SEMAPHORE,
        "p-num",
        [
            {"op": "test", "path": "/status/entry", "value": {"ttlSeconds": 15, "count": 1}},
            {"op": "replace", "path": "/status/entry/count", "value": 2},
        ],
    )
    assert patched.status["entry"] == {"ttlSeconds": 15, "count": 2}


async def test_concurrent_appends_never_conflict_and_none_is_lost(backend: Backend) -> None:
    """20 writers on 4 connections append at once: every item lands, no Conflict."""
    store = backend.store
    await _with_status(store, "p-append", {"note": []})
    clients = [store] + [backend.another() for _ in range(3)]
    await asyncio.gather(
        *(
            clients[i % len(clients)].patch_status(
                SEMAPHORE, "p-append", [{"op": "add", "path": "/status/note/-", "value": f"t{i}"}]
            )
            for i in range(20)
        )
    )
    final = await store.get(SEMAPHORE, "p-append")
    assert sorted(final.status["note"]) == sorted(f"t{i}" for i in range(20))


async def test_a_patch_the_schema_rejects_is_invalid_not_a_conflict(backend: Backend) -> None:
    """The API server answers 422 for both: the store tells them apart."""
    store = backend.store
    await _with_status(store, "p-invalid", {"waiting": 0})
    with pytest.raises(Invalid) as info:
        await store.patch_status(
            SEMAPHORE,
            "p-invalid",
            [
                {"op": "test", "path": "/status/waiting", "value": 0},
                {"op": "replace", "path": "/status/waiting", "value": -5},
            ],
        )
    assert not isinstance(info.value, Conflict)
    assert "status.waiting" in str(info.value)


async def test_a_patch_may_write_only_the_status(backend: Backend) -> None:
    store = backend.store
    await _with_status(store, "p-spec", {"waiting": 0})
    for op in (
        {"op": "replace", "path": "/spec/permits", "value": 9},
        {"op": "remove", "path": "/metadata/labels"},
        {"op": "move", "from": "/status/waiting", "path": "/status/w"},
    ):
        with pytest.raises(InvalidArgument):
            await store.patch_status(SEMAPHORE, "p-spec", [op])
    with pytest.raises(InvalidArgument):
        await store.patch_status(LEASE, "p-spec", [{"op": "add", "path": "/status/x", "value": 1}])
    assert (await store.get(SEMAPHORE, "p-spec")).spec == {"permits": 2}


async def test_a_patch_is_one_watch_event(backend: Backend) -> None:
    store = backend.store
    obj = await _with_status(store, "p-watch", {"note": []})
    async with Reader(store.watch(SEMAPHORE, name="p-watch", since=obj.version)) as reader:
        patched = await store.patch_status(
            SEMAPHORE, "p-watch", [{"op": "add", "path": "/status/note/-", "value": "a"}]
        )
        [event] = await reader.take(1)
        assert event.type == "MODIFIED"
        assert event.object.version == patched.version
        assert event.object.status == {"note": ["a"]}


async def test_patching_a_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.store.patch_status(
            SEMAPHORE, "p-none", [{"op": "add", "path": "/status/note/-", "value": "a"}]
        )


async def test_the_waiter_past_the_queue_bound_is_refused_by_the_schema(
    backend: Backend,
) -> None:
    """An append needs no test, but the schema's bound (1,000 tickets) still holds."""
    from konductor._limits import MAX_QUEUE

    def ticket(i: int) -> dict[str, object]:
        return {
            "id": f"{i:032x}",
            "holder": "h",
            "count": 1,
            "mode": "exclusive",
            "ttlSeconds": 15,
            "renewals": 0,
            "renewedAt": "2026-12-01T00:00:00.000000Z",
            "queuedAt": 1,
        }

    store = backend.store
    await _with_status(
        store,
        "p-full",
        {"holders": [], "queue": [ticket(i) for i in range(MAX_QUEUE)], "nextToken": 1},
    )
    with pytest.raises(Invalid) as info:
        await store.patch_status(
            SEMAPHORE,
            "p-full",
            [{"op": "add", "path": "/status/queue/-", "value": ticket(MAX_QUEUE)}],
        )
    assert not isinstance(info.value, Conflict)
    assert "status.queue" in str(info.value)
