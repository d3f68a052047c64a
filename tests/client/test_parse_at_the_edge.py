"""Arguments are parsed once at the entry point: same checks, same messages, and
``InvalidArgument.argument`` names the parameter (the CLI maps it to its flag)."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

import konductor
import konductor.store
from konductor import Client, InvalidArgument, InvalidName, LocalStore, MemoryStore, SyncClient
from konductor._engine import _validate as check
from konductor._primitives._semaphore import SemaphoreRequest


@pytest.mark.parametrize(
    ("call", "argument", "message"),
    [
        (lambda: check.ttl(0), "ttl", "ttl must be positive, got 0s; e.g. ttl=15"),
        (lambda: check.ttl("15"), "ttl", "ttl must be seconds (int or float) or a timedelta"),
        (lambda: check.ttl(0.5), "ttl", "ttl of 0.5s is below 1s"),
        (lambda: check.timeout(-1), "timeout", "timeout must be >= 0"),
        (lambda: check.seconds(float("nan"), "grow_interval"), "grow_interval", "NaN"),
        (lambda: check.positive_int(0, "permits"), "permits", "permits must be at least 1"),
        (lambda: konductor.validate_name("Bad_Name"), "name", "invalid name 'Bad_Name'"),
    ],
)
def test_each_check_names_its_argument_and_keeps_its_message(
    call: Callable[[], object], argument: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        call()
    assert raised.value.argument == argument
    assert message in str(raised.value)


def test_a_request_is_parsed_into_typed_values() -> None:
    request = SemaphoreRequest.parse("api", 3, 2, dt.timedelta(seconds=20), 5)
    assert request == SemaphoreRequest("api", 3, 2, check.Ttl(20.0), 5.0)
    with pytest.raises(InvalidArgument) as raised:
        SemaphoreRequest.parse("api", 2, 3, 15)
    assert (str(raised.value), raised.value.argument) == ("count=3 is more than permits=2", "count")


def test_the_decorator_and_the_client_give_the_same_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as at_decoration:
        konductor.with_semaphore("api", permits=2, count=3)
    with (
        SyncClient(lambda: LocalStore(tmp_path / "k.db")) as client,
        pytest.raises(InvalidArgument) as at_call,
    ):
        client.try_acquire_semaphore("api", 2, count=3)
    assert str(at_decoration.value) == str(at_call.value)
    assert at_decoration.value.argument == at_call.value.argument == "count"


def test_the_async_client_checks_before_any_api_call() -> None:
    async def main() -> None:
        async with Client(MemoryStore()) as client:
            with pytest.raises(InvalidArgument) as raised:
                await client.acquire_mutex("m", ttl=dt.timedelta(days=2))
            assert raised.value.argument == "ttl"
            with pytest.raises(InvalidName) as bad_name:
                client.lease("Not A Name")
            assert bad_name.value.argument == "name"
            assert (await client.store.list(konductor.store.MUTEX)).items == ()  # nothing written

    asyncio.run(main())


def test_the_clients_own_checks_name_their_argument_too() -> None:
    async def main() -> None:
        async with Client(MemoryStore()) as client:
            failures = {
                "kind": client.delete("semaphores", "x"),
                "conditions": client.create_gate("g", conditions=[{"type": "Nope", "name": "a"}]),
                "leader_fn": client.campaign("l", lambda lease: None),  # type: ignore[arg-type,return-value]
                "delta": client.waitgroup_add("w", True),
            }
            for argument, call in failures.items():
                with pytest.raises(InvalidArgument) as raised:
                    await call
                assert raised.value.argument == argument
        with pytest.raises(InvalidArgument) as raised:
            Client(MemoryStore(), namespace="other")
        assert raised.value.argument == "namespace"

    asyncio.run(main())


def test_the_argument_survives_pickling() -> None:
    # Celery sends a task's exception to the caller pickled.
    exc = pickle.loads(pickle.dumps(InvalidArgument("ttl must be positive", argument="ttl")))
    assert (type(exc), str(exc), exc.argument) == (
        InvalidArgument,
        "ttl must be positive",
        "ttl",
    )
    plain = pickle.loads(pickle.dumps(InvalidArgument("no argument known")))
    assert plain.argument is None
