"""Trace context from a producer, through Celery, to konductor's spans in a prefork worker.

A real ``celery worker`` (tests/observability/celery_tracing_app.py) with
OpenTelemetry's Celery instrumentation; the producer here, instrumented too,
sends the task inside a span of its own. The worker's spans, exported to a
file, must form one trace with it: the task's ``run/...`` span a child of the
producer's publish span, and konductor's ``semaphore acquire`` (the
``CoordinatedTask`` permit) a child of ``run/...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/11"
TASK = "tests.observability.celery_tracing_app.traced"


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_task_trace_runs_from_the_producer_to_the_permit(tmp_path: Path) -> None:
    queue = f"kt-traced-{uuid.uuid4().hex[:10]}"
    spans_file = tmp_path / "spans.jsonl"
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KT_CELERY_BROKER": BROKER,
        "KT_CELERY_QUEUE": queue,
        "KT_SPANS": str(spans_file),
        "KONDUCTOR_STORE": f"local:{tmp_path / 'konductor.db'}",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "tests.observability.celery_tracing_app"),
                *("worker", "--pool=prefork", "-c", "1", "-Q", queue, "-n", f"{queue}@%h"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    producer = Celery("kt-traced-client", broker=BROKER, backend=BROKER, set_as_current=False)
    producer.conf.task_default_queue = queue
    provider = TracerProvider()
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        end = time.monotonic() + 120
        while b"ready." not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < end, "the worker did not get ready"
            time.sleep(0.2)
        with provider.get_tracer("test").start_as_current_span("request") as request:
            result = producer.send_task(TASK)
        assert isinstance(result.get(timeout=120), int)
        trace_id = f"{request.get_span_context().trace_id:032x}"
        publish = [s for s in exported.get_finished_spans() if s.name.startswith("apply_async/")]
        assert len(publish) == 1
        publish_id = f"{publish[0].get_span_context().span_id:016x}"
        end = time.monotonic() + 30
        while not any(s["name"] == f"run/{TASK}" for s in _spans(spans_file)):
            assert time.monotonic() < end, _spans(spans_file)
            time.sleep(0.2)
        worker_spans = _spans(spans_file)
        (run,) = [s for s in worker_spans if s["name"] == f"run/{TASK}"]
        (acquire,) = [s for s in worker_spans if s["name"] == "semaphore acquire"]
        assert run["trace_id"] == trace_id  # one trace, from the producer on
        assert run["parent_id"] == publish_id
        assert acquire["trace_id"] == trace_id
        assert acquire["parent_id"] == run["span_id"]  # the permit, inside the task
    finally:
        instrumentor.uninstrument()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        producer.close()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
