"""konductor's OpenTelemetry spans, collected by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import konductor.tracing
from konductor import AcquireTimeout, Client, SemaphoreLost
from konductor._engine._clock import FakeClock, settle
from tests.observability.conftest import FlakyStore


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    konductor.tracing.instrument(provider)
    yield provider, exporter
    konductor.tracing.uninstrument()


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_acquire_and_hold_spans_carry_position_token_wait_and_outcome(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    clients: Callable[..., Client],
    clock: FakeClock,
) -> None:
    tp, exporter = provider
    a, b = clients("a"), clients("b")
    first = await a.acquire_semaphore("jobs", permits=1)
    with tp.get_tracer("test").start_as_current_span("job") as parent:
        waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", timeout=60))
        await settle()
    await clock.advance(4)
    await first.release()
    second = await waiter
    await clock.advance(2)
    await second.release()

    acquires = spans(exporter, "semaphore acquire")
    assert len(acquires) == 2
    queued = next(
        s for s in acquires if s.attributes and "konductor.queue.position" in s.attributes
    )
    attrs = dict(queued.attributes or {})
    assert attrs["konductor.primitive"] == "semaphore"
    assert attrs["konductor.name"] == "jobs"
    assert attrs["konductor.namespace"] == "default"
    assert attrs["konductor.count"] == 1
    assert attrs["konductor.queue.position"] == 1
    assert attrs["konductor.fencing_token"] == second.token == 2
    assert attrs["konductor.wait.duration"] == 4.0
    assert attrs["konductor.outcome"] == "granted"
    assert [e.name for e in queued.events] == ["queued"]
    # The acquire span is a child of the span current at the call.
    assert queued.parent is not None
    assert queued.parent.span_id == parent.get_span_context().span_id

    holds = spans(exporter, "semaphore hold")
    assert sorted(dict(h.attributes or {})["konductor.fencing_token"] for h in holds) == [1, 2]
    last = next(h for h in holds if dict(h.attributes or {})["konductor.fencing_token"] == 2)
    assert dict(last.attributes or {})["konductor.hold.duration"] == 2.0
    assert last.status.status_code is StatusCode.UNSET
    assert not last.events


async def test_a_lost_grant_ends_its_hold_span_with_the_loss_as_an_exception_event(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    clients: Callable[..., Client],
    clock: FakeClock,
    store: FlakyStore,
) -> None:
    _tp, exporter = provider
    client = clients("a")
    with pytest.raises(SemaphoreLost):
        async with client.semaphore("jobs", permits=1, ttl=3):
            store.fail_writes = True
            await clock.advance(3)
            await asyncio.sleep(30)
    [hold] = spans(exporter, "semaphore hold")
    assert hold.status.status_code is StatusCode.ERROR
    assert dict(hold.attributes or {})["konductor.lost.reason"] == "renewal_deadline"
    [event] = hold.events
    assert event.name == "exception"
    event_attrs = dict(event.attributes or {})
    assert event_attrs["exception.type"] == "konductor.SemaphoreLost"
    assert "not renewed within its TTL" in str(event_attrs["exception.message"])


async def test_a_timed_out_acquire_is_an_error_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    clients: Callable[..., Client],
    clock: FakeClock,
) -> None:
    _tp, exporter = provider
    a, b = clients("a"), clients("b")
    permit = await a.acquire_semaphore("jobs", permits=1)
    waiter = asyncio.ensure_future(b.acquire_semaphore("jobs", timeout=5))
    await clock.advance(5)
    with pytest.raises(AcquireTimeout):
        await waiter
    failed = [
        s for s in spans(exporter, "semaphore acquire") if s.status.status_code is StatusCode.ERROR
    ]
    assert len(failed) == 1
    attrs = dict(failed[0].attributes or {})
    assert attrs["konductor.outcome"] == "timeout"
    assert attrs["error.type"] == "AcquireTimeout"
    assert attrs["konductor.wait.duration"] == 5.0
    await permit.release()


async def test_once_runs_barrier_waits_and_leases_have_spans(
    provider: tuple[TracerProvider, InMemorySpanExporter], clients: Callable[..., Client]
) -> None:
    _tp, exporter = provider
    client, other = clients("a"), clients("b")

    async def migrate() -> str:
        return "done"

    async def broken() -> None:
        raise RuntimeError("disk full")

    assert await client.once("migrations", migrate) == "done"
    with pytest.raises(RuntimeError):
        await client.once("broken", broken)
    first = asyncio.ensure_future(client.arrive_and_wait("start", expected=2, timeout=5))
    await settle()
    await other.arrive_and_wait("start", expected=2, timeout=5)  # opens it: no wait
    await first
    async with client.lease("leader", ttl=5):
        pass
    runs = spans(exporter, "once run")
    assert len(runs) == 2
    by_name = {dict(s.attributes or {})["konductor.name"]: s for s in runs}
    assert by_name["migrations"].status.status_code is StatusCode.UNSET
    assert by_name["broken"].status.status_code is StatusCode.ERROR
    assert dict(by_name["broken"].attributes or {})["error.type"] == "RuntimeError"
    [wait] = spans(exporter, "barrier wait")
    assert dict(wait.attributes or {})["konductor.name"] == "start"
    assert len(spans(exporter, "lease acquire")) == 1
    assert len(spans(exporter, "lease hold")) == 1


async def test_uninstrument_stops_recording(
    provider: tuple[TracerProvider, InMemorySpanExporter], clients: Callable[..., Client]
) -> None:
    _tp, exporter = provider
    konductor.tracing.uninstrument()
    client = clients("a")
    async with client.semaphore("jobs", permits=1):
        pass
    assert exporter.get_finished_spans() == ()


def test_sync_client_spans_are_children_of_the_callers_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The sync facade's loop thread runs the acquire in the caller's context (as in a
    Celery task, whose span the Celery instrumentation makes current)."""
    from konductor.testing import memory_sync_client

    tp, exporter = provider
    tracer = tp.get_tracer("test")
    with (
        memory_sync_client() as client,
        tracer.start_as_current_span("task") as task,
        client.semaphore("jobs", permits=1),
    ):
        pass
    ours = [s for s in exporter.get_finished_spans() if s.name != "task"]
    assert sorted(s.name for s in ours) == ["semaphore acquire", "semaphore hold"]
    assert all(s.parent is not None for s in ours)
    assert {s.parent.span_id for s in ours if s.parent} == {task.get_span_context().span_id}
