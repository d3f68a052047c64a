"""Untrusted state: garbage written into an object while clients hold and wait.

Anyone with the Role (or ``kubectl edit``) can write an object's status. Two
defences, each tested here:

1. The schema: every store (the real API server through the CRDs' schemas;
   the memory and local stores by applying the same schemas themselves)
   refuses a malformed write with ``Invalid`` and leaves the object unchanged.
2. The client: state that does get in (an older or buggy writer, a store
   whose schema check was bypassed, or what no schema can say, such as
   duplicate ids) is parsed at the edge. A semaphore whose state does not
   parse admits nobody and raises ``CorruptState`` naming the object and the
   field; nothing spins; after a repair everything works again.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from konductor import Client, CorruptState, Invalid, SemaphoreLost
from konductor._store import _local, _memory
from konductor.store import (
    BARRIER,
    GATE,
    LEASE,
    MUTEX,
    ONCE,
    RATELIMIT,
    RWMUTEX,
    SEMAPHORE,
    WAITGROUP,
    Kind,
)
from tests.store.conftest import Backend

Clients = Callable[..., Client]
JSON = dict[str, Any]
Mutation = Callable[[JSON], None]


def _holder(status: JSON, **changes: Any) -> None:
    status["holders"][0].update(changes)


def _drop(key: str) -> Mutation:
    return lambda s: s["holders"][0].pop(key)


def _set(key: str, value: Any) -> Mutation:
    def mutate(s: JSON) -> None:
        s[key] = value

    return mutate


def _entry(key: str, value: Any) -> Mutation:
    return lambda s: _holder(s, **{key: value})


# Malformed writes into a semaphore's status that its schema can say are wrong.
MALFORMED_QUEUED: dict[str, Mutation] = {
    "count-negative": _entry("count", -5),
    "count-zero": _entry("count", 0),
    "count-string": _entry("count", "two"),
    "count-huge": _entry("count", 10**12),
    "holders-not-a-list": _set("holders", {"a": 1}),
    "holders-a-string": _set("holders", "ab"),
    "holder-entry-a-string": lambda s: s["holders"].__setitem__(0, "ab"),
    "queue-an-int": _set("queue", 5),
    "id-missing": _drop("id"),
    "id-not-a-string": _entry("id", 7),
    "id-empty": _entry("id", ""),
    "id-oversized": _entry("id", "x" * 1000),
    "holder-oversized": _entry("holder", "h" * 10_000),
    "ttl-string": _entry("ttlSeconds", "abc"),
    "ttl-negative": _entry("ttlSeconds", -1),
    "ttl-huge": _entry("ttlSeconds", 1e12),
    "renewals-negative": _entry("renewals", -1),
    "mode-unknown": _entry("mode", "everything"),
    "token-missing": _drop("token"),
    "token-negative": _entry("token", -3),
    "next-token-negative": _set("nextToken", -100),
    "next-token-string": _set("nextToken", "12"),
    "in-use-negative": _set("inUse", -1),
    "too-many-holders": lambda s: s.__setitem__(
        "holders",
        [{**s["holders"][0], "id": f"id-{i}", "token": i + 1} for i in range(1001)],
    ),
}

# Malformed writes into the other kinds' status.
_MEMBER = {"id": "a", "holder": "h", "share": 1, "demand": 1, "ttlSeconds": 3, "renewals": 0}
MALFORMED_OTHER: list[tuple[Kind, JSON]] = [
    (BARRIER, {"arrived": "everyone"}),
    (BARRIER, {"arrived": [{"arrivedAt": "now"}]}),
    (BARRIER, {"arrived": [{"identity": 5}]}),
    (BARRIER, {"arrivedCount": -1}),
    (BARRIER, {"open": "yes"}),
    (GATE, {"open": 1}),
    (GATE, {"changedBy": "x" * 1000}),
    (ONCE, {"state": "Bogus"}),
    (ONCE, {"attempt": -1}),
    (ONCE, {"state": "Running", "run": {"holder": "h", "attempt": 1, "ttlSeconds": 5}}),
    (ONCE, {"run": {"id": "a", "holder": "h", "attempt": 1, "ttlSeconds": "x", "renewals": 0}}),
    (ONCE, {"error": "e" * 5000}),
    (WAITGROUP, {"count": -5}),
    (WAITGROUP, {"count": "two"}),
    (WAITGROUP, {"ops": 3}),
    (WAITGROUP, {"ops": [str(i) for i in range(101)]}),
    (MUTEX, {"holders": [{"id": "a"}]}),
    (RWMUTEX, {"queue": [{"id": "a", "holder": "h", "count": 1, "mode": "sideways"}]}),
    (RATELIMIT, {"members": 3}),
    (RATELIMIT, {"members": [{"id": "a"}]}),
    (RATELIMIT, {"members": [{**_MEMBER, "share": -1}]}),
    (RATELIMIT, {"members": [{**_MEMBER, "share": "all"}]}),
    (RATELIMIT, {"members": [{**_MEMBER, "ttlSeconds": 0}]}),
    (RATELIMIT, {"memberCount": -1}),
]

MALFORMED_SPEC: list[tuple[Kind, JSON]] = [
    (RATELIMIT, {}),
    (RATELIMIT, {"rate": 0}),
    (RATELIMIT, {"rate": "100/s"}),
    (RATELIMIT, {"rate": 1e10}),
    (RATELIMIT, {"rate": 5, "burst": 0}),
    (SEMAPHORE, {"permits": -1}),
    (SEMAPHORE, {"permits": 0}),
    (SEMAPHORE, {"permits": "two"}),
    (SEMAPHORE, {"permits": 1_000_001}),
    (SEMAPHORE, {}),
    (BARRIER, {"expected": 0}),
    (BARRIER, {"expected": "3"}),
    (GATE, {"conditions": [{"type": "Job"}]}),
    (GATE, {"conditions": "all"}),
]


async def _held_status(clients: Clients) -> tuple[Client, list[Any]]:
    """A semaphore of 2 with two live holders; the holders' permits."""
    a, b = clients(), clients()
    permits = [
        await a.acquire_semaphore("sem", permits=2, ttl=10),
        await b.acquire_semaphore("sem", ttl=10),
    ]
    return a, permits


async def test_malformed_status_writes_are_refused_and_change_nothing(
    clients: Clients, backend: Backend
) -> None:
    _client, permits = await _held_status(clients)
    store = backend.store
    good = await store.get(SEMAPHORE, "sem")
    accepted = []
    for name, mutate in MALFORMED_QUEUED.items():
        status = copy.deepcopy(good.status)
        mutate(status)
        try:
            await store.replace_status(SEMAPHORE, "sem", status, version=good.version)
        except Invalid as exc:
            refused: Invalid | None = exc
        else:
            refused = None
        if refused is None:
            accepted.append(name)
            continue
        assert refused.fields, name
        after = await store.get(SEMAPHORE, "sem")
        assert after.version == good.version, name
        assert after.status == good.status, name
    assert accepted == []
    for p in permits:
        await p.release()


async def test_malformed_writes_of_every_kind_are_refused(backend: Backend) -> None:
    store = backend.store
    base = {BARRIER: {"expected": 2}, SEMAPHORE: {"permits": 2}, RATELIMIT: {"rate": 5}}
    accepted = []
    for i, (kind, status) in enumerate(MALFORMED_OTHER):
        obj = await store.create(kind, f"o{i}", base.get(kind, {}))
        try:
            await store.replace_status(kind, obj.name, status, version=obj.version)
        except Invalid:
            assert (await store.get(kind, obj.name)).version == obj.version
        else:
            accepted.append((kind.kind, status))
    for i, (kind, spec) in enumerate(MALFORMED_SPEC):
        try:
            await store.create(kind, f"s{i}", spec)
        except Invalid:
            pass
        else:
            accepted.append((kind.kind, spec))
    # A live `kubectl edit` of spec.permits stays possible, within range.
    sem = await store.create(SEMAPHORE, "editable", {"permits": 2})
    sem = await store.replace_spec(SEMAPHORE, "editable", {"permits": 5}, version=sem.version)
    with pytest.raises(Invalid):
        await store.replace_spec(SEMAPHORE, "editable", {"permits": "5"}, version=sem.version)
    assert accepted == []


@contextmanager
def _schema_bypassed() -> Iterator[None]:
    """Let a write through the memory and local stores unchecked, as an older konductor
    (or a store without a schema) would have written it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_memory, "validate_status", lambda *a: None)
        mp.setattr(_local, "validate_status", lambda *a: None)
        yield


class Witness:
    """Who is inside a semaphore, counted outside konductor."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0

    def enter(self) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)

    def leave(self) -> None:
        self.inside -= 1


# What clients must do with state the schema would refuse but that got in anyway.
CLIENT_CASES = [
    "count-negative",
    "count-string",
    "holders-not-a-list",
    "holder-entry-a-string",
    "queue-an-int",
    "id-missing",
    "id-not-a-string",
    "ttl-string",
    "next-token-negative",
    "token-missing",
]


@pytest.mark.parametrize("case", CLIENT_CASES)
@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
async def test_clients_refuse_corrupt_state_admit_nobody_and_recover(
    clients: Clients, backend: Backend, case: str
) -> None:
    witness = Witness()
    _a, permits = await _held_status(clients)
    witness.enter()
    witness.enter()
    waiter = clients()

    async def wait_for_permit() -> None:
        async with waiter.semaphore("sem", timeout=20):
            witness.enter()
            witness.leave()

    waiting = asyncio.ensure_future(wait_for_permit())
    for _ in range(200):  # until the waiter's ticket is in the queue
        good = await backend.store.get(SEMAPHORE, "sem")
        if good.status["queue"]:
            break
        await asyncio.sleep(0.05)
    assert len(good.status["queue"]) == 1
    bad = copy.deepcopy(good.status)
    MALFORMED_QUEUED[case](bad)
    cpu_before, wall_before = time.process_time(), time.monotonic()
    with _schema_bypassed():
        await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    # The waiter fails with the clear error, not a raw TypeError/ValueError, and fast.
    with pytest.raises(CorruptState) as caught:
        await asyncio.wait_for(waiting, 10)
    assert caught.value.kind == "Semaphore"
    assert caught.value.name == "sem"
    assert caught.value.field.startswith("status.")
    assert "konductor delete semaphore sem" in str(caught.value)
    # Nobody else is admitted either, blocking or not.
    others = [clients() for _ in range(3)]
    results = await asyncio.gather(
        *(c.acquire_semaphore("sem", timeout=2) for c in others),
        others[0].try_acquire_semaphore("sem"),
        return_exceptions=True,
    )
    assert all(isinstance(r, CorruptState) for r in results), results
    await asyncio.sleep(1.0)
    cpu = time.process_time() - cpu_before
    window = time.monotonic() - wall_before
    assert witness.peak <= 2
    assert cpu < 0.35 * window, f"{cpu:.2f}s of CPU in {window:.2f}s"
    # Repair: the good state back (what `kubectl edit` or a delete would give).
    current = await backend.store.get(SEMAPHORE, "sem")
    # No waiting for the clients' watches: a client that finds its cached copy
    # corrupt reads the object again before it gives up.
    await backend.store.replace_status(SEMAPHORE, "sem", good.status, version=current.version)
    tokens = [p.token for p in permits]
    for p in permits:
        p.ensure_held()  # renewals failed meanwhile, but within the ttl: still held
        await p.release()
        witness.leave()
    async with waiter.semaphore("sem", timeout=10) as again:
        assert again.token > max(tokens)


async def test_duplicate_ids_refused_by_clients_on_every_store(
    clients: Clients, backend: Backend
) -> None:
    """No schema can say ids must be unique: the client does, on every store."""
    _a, permits = await _held_status(clients)
    good = await backend.store.get(SEMAPHORE, "sem")
    bad = copy.deepcopy(good.status)
    bad["holders"][1]["id"] = bad["holders"][0]["id"]
    await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    with pytest.raises(CorruptState) as caught:
        await clients().acquire_semaphore("sem", timeout=3)
    assert caught.value.field == "status.holders[1].id"
    current = await backend.store.get(SEMAPHORE, "sem")
    # No waiting for the clients' watches: a client that finds its cached copy
    # corrupt reads the object again before it gives up.
    await backend.store.replace_status(SEMAPHORE, "sem", good.status, version=current.version)
    for p in permits:
        await p.release()


async def test_tokens_never_go_backwards(clients: Clients, backend: Backend) -> None:
    """``nextToken`` written below a held token (valid for the schema) is overruled."""
    _a, permits = await _held_status(clients)
    good = await backend.store.get(SEMAPHORE, "sem")
    held = max(p.token for p in permits)
    status = {**copy.deepcopy(good.status), "nextToken": 1}
    await backend.store.replace_status(SEMAPHORE, "sem", status, version=good.version)
    await permits[0].release()
    permit = await clients().acquire_semaphore("sem", timeout=5)
    assert permit.token > held
    await permit.release()
    await permits[1].release()


async def test_a_lease_at_the_int32_maximum_raises_corrupt_state(
    clients: Clients, backend: Backend
) -> None:
    """leaseTransitions is an int32: the next holder's token cannot be larger."""
    await backend.store.create(
        LEASE,
        "leader",
        {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 2**31 - 1},
    )
    with pytest.raises(CorruptState) as caught:
        await clients().try_acquire_lease("leader", ttl=5)
    assert caught.value.field == "spec.leaseTransitions"
    assert "int32" in str(caught.value)
    # Repair: delete it; the next leader starts over.
    await backend.store.delete(LEASE, "leader")
    lease = await clients().try_acquire_lease("leader", ttl=5)
    assert lease is not None
    await lease.release()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_a_holder_whose_object_stays_corrupt_loses_at_its_deadline(
    clients: Clients, backend: Backend
) -> None:
    """Renewals keep failing with CorruptState; the holder gives up at its own deadline."""
    client = clients()
    permit = await client.acquire_semaphore("sem", permits=1, ttl=1.5)
    good = await backend.store.get(SEMAPHORE, "sem")
    bad = copy.deepcopy(good.status)
    bad["holders"][0]["count"] = "one"
    with _schema_bypassed():
        await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    await asyncio.wait_for(permit.lost.wait(), 10)
    with pytest.raises(SemaphoreLost):
        permit.ensure_held()


@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
async def test_a_client_that_saw_corrupt_state_works_right_after_the_repair(
    clients: Clients, backend: Backend
) -> None:
    """Its cache still holds the corrupt copy and it has no watch open: it re-reads."""
    _a, permits = await _held_status(clients)
    good = await backend.store.get(SEMAPHORE, "sem")
    bad = copy.deepcopy(good.status)
    bad["holders"] = "garbage"
    with _schema_bypassed():
        bad_obj = await backend.store.replace_status(SEMAPHORE, "sem", bad, version=good.version)
    late = clients()
    with pytest.raises(CorruptState):
        await late.try_acquire_semaphore("sem")
    await backend.store.replace_status(SEMAPHORE, "sem", good.status, version=bad_obj.version)
    await permits[0].release()
    permit = await late.try_acquire_semaphore("sem")
    assert permit is not None
    assert permit.token > max(p.token for p in permits)
    await permit.release()
    await permits[1].release()


@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
@pytest.mark.parametrize("permits", ["two", -5, None, 2.5])
async def test_a_corrupt_spec_is_refused_with_the_kubectl_edit_hint(
    clients: Clients, backend: Backend, permits: Any
) -> None:
    _a, held = await _held_status(clients)
    obj = await backend.store.get(SEMAPHORE, "sem")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_memory, "validate_spec", lambda *a: None)
        mp.setattr(_local, "validate_spec", lambda *a: None)
        await backend.store.replace_spec(
            SEMAPHORE, "sem", {"permits": permits}, version=obj.version
        )
    with pytest.raises(CorruptState) as caught:
        await clients().acquire_semaphore("sem", timeout=2)
    assert caught.value.field == "spec.permits"
    assert "kubectl edit semaphores.konductor.io sem" in str(caught.value)
    obj = await backend.store.get(SEMAPHORE, "sem")
    await backend.store.replace_spec(SEMAPHORE, "sem", {"permits": 3}, version=obj.version)
    async with clients().semaphore("sem", timeout=5) as permit:
        assert permit.token > max(p.token for p in held)
    for p in held:
        await p.release()


@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
async def test_a_client_that_saw_a_corrupt_spec_works_right_after_the_repair(
    clients: Clients, backend: Backend
) -> None:
    """Its cache holds the corrupt spec and no watch is open: it re-reads before refusing."""
    _a, held = await _held_status(clients)
    obj = await backend.store.get(SEMAPHORE, "sem")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_memory, "validate_spec", lambda *a: None)
        mp.setattr(_local, "validate_spec", lambda *a: None)
        obj = await backend.store.replace_spec(
            SEMAPHORE, "sem", {"permits": "two"}, version=obj.version
        )
    late = clients()
    with pytest.raises(CorruptState):
        await late.try_acquire_semaphore("sem")
    await backend.store.replace_spec(SEMAPHORE, "sem", {"permits": 3}, version=obj.version)
    permit = await late.try_acquire_semaphore("sem")
    assert permit is not None
    assert permit.token > max(p.token for p in held)
    await permit.release()
    for p in held:
        await p.release()


async def _start_barrier(c: Client) -> None:
    await c.arrive_barrier("obj", 3)


async def _start_waitgroup(c: Client) -> None:
    await c.waitgroup_add("obj", 2)


async def _start_ratelimit(c: Client) -> None:
    await c.store.create(RATELIMIT, "obj", {"rate": 1 / 3600})


async def _wait_ratelimit(c: Client) -> None:
    # One token an hour, shared: the bucket starts empty, so acquire waits.
    async with c.rate_limit("obj", "1/h", ttl=10) as limiter:
        await limiter.acquire(timeout=20)


async def _start_mutex(c: Client) -> None:
    await c.acquire_mutex("obj", ttl=10)


async def _start_once(c: Client) -> asyncio.Future[Any]:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    runner = asyncio.ensure_future(c.once("obj", slow, ttl=10))
    await asyncio.wait_for(started.wait(), 5)
    return runner


# Per kind: how one client makes others wait, how they wait, and what is written.
WAITING: dict[str, tuple[Kind, Any, Callable[[Client], Any], JSON]] = {
    "barrier": (
        BARRIER,
        _start_barrier,
        lambda c: c.arrive_and_wait("obj", 3, timeout=20),
        {"arrived": [{"identity": 5}], "open": False},
    ),
    "barrier-open-garbage": (
        BARRIER,
        _start_barrier,
        lambda c: c.wait_barrier("obj", timeout=20),
        {"arrived": [], "open": "yes"},
    ),
    "waitgroup": (
        WAITGROUP,
        _start_waitgroup,
        lambda c: c.waitgroup_wait("obj", timeout=20),
        {"count": -5, "drains": 0, "ops": []},
    ),
    "ratelimit": (
        RATELIMIT,
        _start_ratelimit,
        _wait_ratelimit,
        {"members": [{"id": "x", "holder": "h"}], "allocated": 0, "memberCount": 1},
    ),
    "mutex": (
        MUTEX,
        _start_mutex,
        lambda c: c.acquire_mutex("obj", ttl=10, timeout=20),
        {"holders": [{"holder": "h"}], "queue": []},
    ),
    "once": (
        ONCE,
        _start_once,
        lambda c: c.once("obj", _async_noop, ttl=10, timeout=20),
        {"state": "Bogus", "attempt": 1},
    ),
}


async def _async_noop() -> None:
    return None


@pytest.mark.parametrize("case", sorted(WAITING))
@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
async def test_waiters_of_every_kind_fail_clearly_and_idle_on_corrupt_state(
    clients: Clients, backend: Backend, case: str
) -> None:
    kind, start, wait, bad = WAITING[case]
    runner = await start(clients())
    waiting = asyncio.ensure_future(wait(clients()))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    obj = await backend.store.get(kind, "obj")
    cpu_before, wall_before = time.process_time(), time.monotonic()
    with _schema_bypassed():
        await backend.store.replace_status(kind, "obj", bad, version=obj.version)
    with pytest.raises(CorruptState) as caught:
        await asyncio.wait_for(waiting, 10)
    assert caught.value.kind == kind.kind
    assert caught.value.name == "obj"
    assert caught.value.field.startswith("status.")
    await asyncio.sleep(1.0)
    cpu = time.process_time() - cpu_before
    window = time.monotonic() - wall_before
    assert cpu < 0.35 * window, f"{cpu:.2f}s of CPU in {window:.2f}s"
    if runner is not None:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
