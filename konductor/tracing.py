"""OpenTelemetry spans for konductor (the ``konductor[otel]`` extra: the API only).

:func:`instrument` makes every client of the process record spans through the
given tracer provider (the global one unless another is given; without an SDK
configured by the application the API's no-op tracer records nothing). Bring
your own SDK and exporter.

Spans (kind INTERNAL; names are low-cardinality, the object is an attribute):

- ``{primitive} acquire`` (e.g. ``semaphore acquire``, ``lease acquire``): from
  the call to its outcome. Attributes ``konductor.primitive``,
  ``konductor.name``, ``konductor.namespace``, ``konductor.count``,
  ``konductor.queue.position`` (1-based, when it queued),
  ``konductor.fencing_token``, ``konductor.wait.duration`` (seconds) and
  ``konductor.outcome`` (``granted``, ``busy``, ``timeout``, ``cancelled``,
  ``error``); a failed acquire has status ERROR and ``error.type``.
- ``{primitive} hold``: from the grant to its release or loss; a loss is an
  ``exception`` event (the primitive's ``LostError``), status ERROR and
  ``konductor.lost.reason``.
- ``once run`` (the function of a once, on its runner) and ``barrier wait``.

Spans are children of the span current when the call was made, so inside a
Celery task instrumented by ``opentelemetry-instrumentation-celery`` (which
carries the trace context in the task's headers) they join the producer's
trace with nothing more to do.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "konductor.tracing needs the OpenTelemetry API: pip install 'konductor[otel]'"
    ) from exc

from konductor import _observe as observe
from konductor._errors import LeaseLost, LostError, MutexLost, SemaphoreLost
from konductor._observe import Attempt, Hold, Operation, Site

__all__ = ["Tracing", "instrument", "uninstrument"]

_LOST: dict[str, type[LostError]] = {
    "semaphore": SemaphoreLost,
    "mutex": MutexLost,
    "rwmutex": MutexLost,
    "lease": LeaseLost,
}


def _attributes(site: Site) -> dict[str, Any]:
    return {
        "konductor.primitive": site.primitive,
        "konductor.name": site.name,
        "konductor.namespace": site.namespace,
    }


def _fail(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


class Tracing(observe.Observer):
    """The spans of one tracer provider; made by :func:`instrument`."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("konductor")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            ours = "0"
        self.tracer = trace.get_tracer("konductor", ours, tracer_provider=tracer_provider)

    def acquire_started(self, att: Attempt) -> None:
        att.baggage[self] = self.tracer.start_span(
            f"{att.site.primitive} acquire",
            kind=SpanKind.INTERNAL,
            attributes={**_attributes(att.site), "konductor.count": att.count},
        )

    def acquire_queued(self, att: Attempt) -> None:
        span: Span | None = att.baggage.get(self)
        if span is not None and att.position is not None:
            span.set_attribute("konductor.queue.position", att.position)
            span.add_event("queued", {"konductor.queue.position": att.position})

    def acquire_ended(self, att: Attempt) -> None:
        span: Span | None = att.baggage.pop(self, None)
        if span is None:
            return
        span.set_attribute("konductor.outcome", att.result)
        span.set_attribute("konductor.wait.duration", att.wait)
        if att.token is not None:
            span.set_attribute("konductor.fencing_token", att.token)
        if att.error is not None and att.result != "cancelled":
            _fail(span, att.error)
        span.end()

    def granted(self, hold: Hold) -> None:
        hold.baggage[self] = self.tracer.start_span(
            f"{hold.site.primitive} hold",
            kind=SpanKind.INTERNAL,
            attributes={
                **_attributes(hold.site),
                "konductor.count": hold.count,
                "konductor.fencing_token": hold.token,
            },
        )

    def hold_ended(self, hold: Hold) -> None:
        span: Span | None = hold.baggage.pop(self, None)
        if span is None:
            return
        span.set_attribute("konductor.hold.duration", hold.held)
        if hold.reason is not None:
            span.set_attribute("konductor.lost.reason", hold.reason)
            error = _LOST.get(hold.site.primitive, LostError)(
                f"{hold.site.primitive} {hold.site.name!r} (token {hold.token}) was lost: "
                f"{hold.message}"
            )
            _fail(span, error)
        span.end()

    def operation_started(self, op: Operation) -> None:
        name = f"{op.site.primitive} {op.what}"
        attributes = _attributes(op.site)
        op.baggage[self] = self.tracer.start_span(
            name, kind=SpanKind.INTERNAL, attributes=attributes
        )

    def operation_ended(self, op: Operation) -> None:
        span: Span | None = op.baggage.pop(self, None)
        if span is None:
            return
        if op.error is not None:
            _fail(span, op.error)
        span.end()


_current: Tracing | None = None
_guard = threading.Lock()


def instrument(tracer_provider: TracerProvider | None = None) -> Tracing:
    """Record konductor's spans through ``tracer_provider`` (default: the global one).

    A second call replaces the first (one tracer provider at a time).
    """
    global _current
    with _guard:
        if _current is not None:
            observe.uninstall(_current)
        _current = Tracing(tracer_provider)
        observe.install(_current)
        return _current


def uninstrument() -> None:
    """Stop recording spans (idempotent); spans still open then are never ended."""
    global _current
    with _guard:
        if _current is not None:
            observe.uninstall(_current)
            _current = None
