"""Property-based fuzz of the public API: every call succeeds or raises konductor's own
error naming the parameter, and a rejected call leaves the store unchanged.

Names, counts, ttls, timeouts and callables are drawn from valid values and
every kind of garbage (wrong types, bools, NaN, infinities, negative and huge
numbers, overlong strings, sync functions where async ones are wanted). Runs
on the memory store (hundreds of examples, seconds), the local store and,
bounded, on the real API server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from konductor import Client, InvalidArgument, KonductorError, LocalStore, MemoryStore
from konductor.store import ALL_KINDS, JOB, KubernetesStore, Store
from tests.store.conftest import fresh_namespace

GOOD_NAMES = st.sampled_from(["a", "sem-1", "x.y", "n" * 63])
BAD_NAMES = st.one_of(
    st.text(max_size=8),
    st.just(""),
    st.just("UPPER"),
    st.just("x" * 254),
    st.integers(),
    st.none(),
)


# Valid values are drawn as often as all kinds of garbage together, so that calls
# also succeed and later calls meet objects that exist.
def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


NAMES = _mostly(GOOD_NAMES, BAD_NAMES)
INTS = _mostly(
    st.integers(min_value=1, max_value=4),
    st.one_of(
        st.integers(min_value=-3, max_value=5),
        st.sampled_from([0, 10**6, 10**6 + 1, 10**12, -(10**12)]),
        st.booleans(),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.none(),
    ),
)
SECONDS = _mostly(
    st.floats(min_value=1, max_value=60),
    st.one_of(
        st.sampled_from([0, 0.5, -1, 86_400, 86_401, 10**9, float("nan"), float("inf")]),
        st.timedeltas(min_value=dt.timedelta(seconds=-5), max_value=dt.timedelta(seconds=90)),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    ),
)


async def _async_fn() -> str:
    return "ran"


def _sync_fn() -> str:
    return "ran"


async def _needs_arg(x: int) -> int:
    return x


class _AsyncCallable:
    async def __call__(self) -> str:
        return "ran"


CALLABLES = st.sampled_from(
    [
        _async_fn,
        _async_fn,
        _async_fn,
        functools.partial(_needs_arg, 1),
        _AsyncCallable(),
        _sync_fn,
        _needs_arg,
        functools.partial(_sync_fn),
        "not callable",
        None,
        print,
        int,
    ]
)

# Which parameter each operation's error must name, by the argument given.
PARAMS = ("name", "permits", "count", "ttl", "timeout", "expected", "delta", "fn")


def _ops(client: Client) -> dict[str, Callable[..., Awaitable[Any]]]:
    return {
        "semaphore": lambda name, n, m, ttl, timeout, fn: client.try_acquire_semaphore(
            name, permits=n, count=m, ttl=ttl
        ),
        "mutex": lambda name, n, m, ttl, timeout, fn: client.try_acquire_mutex(name, ttl=ttl),
        "lease": lambda name, n, m, ttl, timeout, fn: client.try_acquire_lease(name, ttl=ttl),
        "barrier": lambda name, n, m, ttl, timeout, fn: client.arrive_barrier(name, n),
        "waitgroup": lambda name, n, m, ttl, timeout, fn: client.waitgroup_add(name, n),
        "once": lambda name, n, m, ttl, timeout, fn: client.once(
            name, fn, ttl=ttl, timeout=timeout
        ),
        "wait": lambda name, n, m, ttl, timeout, fn: client.wait_barrier(name, timeout=timeout),
        "gate": lambda name, n, m, ttl, timeout, fn: client.create_gate(name),
        "wait_gate": lambda name, n, m, ttl, timeout, fn: client.wait_gate(name, timeout=timeout),
        "read_lock": lambda name, n, m, ttl, timeout, fn: client.acquire_read_lock(
            name, ttl=ttl, timeout=timeout
        ),
        "write_lock": lambda name, n, m, ttl, timeout, fn: client.acquire_write_lock(
            name, ttl=ttl, timeout=timeout
        ),
        "waitgroup_wait": lambda name, n, m, ttl, timeout, fn: client.waitgroup_wait(
            name, timeout=timeout
        ),
        "acquire_semaphore": lambda name, n, m, ttl, timeout, fn: client.acquire_semaphore(
            name, permits=n, count=m, ttl=ttl, timeout=timeout
        ),
    }


OPS = st.sampled_from(sorted(_ops(Client(MemoryStore()))))
CALL = st.tuples(OPS, NAMES, INTS, INTS, SECONDS, SECONDS, CALLABLES)


async def _snapshot(store: Store) -> set[tuple[str, str, str]]:
    """Every object's (kind, name, version): changes if anything was written."""
    out: set[tuple[str, str, str]] = set()
    for kind in ALL_KINDS:
        if kind is JOB:
            continue
        for obj in (await store.list(kind)).items:
            out.add((kind.kind, obj.name, obj.version))
    return out


async def _one_call(store: Store, call: tuple[Any, ...]) -> None:
    op, name, n, m, ttl, timeout, fn = call
    async with Client(store) as client:
        before = await _snapshot(store)
        # Short waits only: a wait on a barrier nobody else arrives at times out.
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            timeout = min(timeout, 0.05)
        elif (isinstance(timeout, dt.timedelta) and timeout.total_seconds() > 0) or timeout is None:
            timeout = 0.05
        try:
            result = await _ops(client)[op](name, n, m, ttl, timeout, fn)
        except InvalidArgument as exc:
            rejected: InvalidArgument | None = exc
        except KonductorError as exc:
            event(f"{op}: {type(exc).__name__}")
            return  # a konductor error of another kind (NotFound, WaitTimeout, ...)
        else:
            rejected = None
        if rejected is not None:
            event(f"{op}: rejected")
            message = str(rejected).lower()
            assert any(p in message for p in PARAMS), (call, rejected)
            assert await _snapshot(store) == before, f"rejected {call} but wrote"
            return
        event(f"{op}: ok")
        release = getattr(result, "release", None)
        if release is not None:
            await release()


@pytest.mark.timeout(120)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(CALL, min_size=1, max_size=4))
def test_public_api_on_the_memory_store(calls: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        store = MemoryStore()
        for call in calls:
            await _one_call(store, call)

    asyncio.run(run())


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(CALL, min_size=1, max_size=3))
def test_public_api_on_the_local_store(calls: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for call in calls:
                await _one_call(LocalStore(Path(tmp) / "k.db"), call)

    asyncio.run(run())


@pytest.mark.kubernetes
@pytest.mark.timeout(300)
def test_public_api_on_the_api_server(kube_crds: Any) -> None:
    ns = fresh_namespace(kube_crds)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(call=CALL)
    def check(call: tuple[Any, ...]) -> None:
        async def run() -> None:
            async with KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig) as store:
                await _one_call(store, call)

        asyncio.run(run())

    check()


@pytest.mark.parametrize("identity", ["x" * 254, 5, b"bytes"])
def test_an_identity_the_schema_would_refuse_is_refused_at_once(identity: Any) -> None:
    store = MemoryStore()
    with pytest.raises(InvalidArgument, match="identity"):
        Client(store, identity=identity)
    assert Client(store, identity="x" * 253).identity == "x" * 253
