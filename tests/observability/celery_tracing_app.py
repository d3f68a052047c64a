"""A Celery app traced with OpenTelemetry's own Celery instrumentation and konductor's spans.

Run by tests/observability/test_celery_tracing.py as a real ``celery worker``,
set up as docs/observability.md tells users to: in each prefork child
(``worker_process_init``) a tracer provider, ``CeleryInstrumentor().instrument()``
and ``konductor.tracing.instrument()``. Finished spans are appended, one JSON
line each, to the file named by ``KT_SPANS`` (an exporter of the test's own;
any exporter would do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import konductor.tracing
from konductor.integrations.celery import CoordinatedTask

BROKER = os.environ["KT_CELERY_BROKER"]
app = Celery("kt_traced", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=os.environ["KT_CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    result_expires=600,
)


class JsonLinesExporter(SpanExporter):
    """Each finished span as one line of JSON: name, ids, parent."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                ctx = span.get_span_context()
                assert ctx is not None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": f"{ctx.trace_id:032x}",
                            "span_id": f"{ctx.span_id:016x}",
                            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                            "pid": os.getpid(),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


@signals.worker_process_init.connect
def _trace_this_child(**_: Any) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["KT_SPANS"])))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    konductor.tracing.instrument(provider)


@app.task(base=CoordinatedTask, semaphore="obs-traced", permits=1, on_full="wait")
def traced() -> int:
    return os.getpid()
