"""OpenTelemetry tracing, wire-compatible with opentelemetry-instrumentation-celery both ways.

A publish is a PRODUCER span ``apply_async/<event name>`` whose context travels as top-level
message headers (W3C ``traceparent``, ``tracestate``, ``baggage``: whatever the configured
propagators write), as the Celery instrumentation injects it; a consumed message is a CONSUMER
span ``run/<task name>`` whose parent is extracted from those headers, and which is current
while the handlers run (their own spans and publishes become its children). Attributes follow
the instrumentation: ``celery.action``, ``celery.task_name``, ``messaging.message_id``,
``messaging.destination``, ``messaging.conversation_id``, ``celery.retries``; exceptions are
recorded and the status set to ERROR.

No OpenTelemetry installed, or no tracer provider configured: ``tracer()`` is None and nothing
here runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the tracing extra is not installed
    trace = None  # type: ignore[assignment]

_NAME = "earnorm"


def tracer() -> Any:
    """The tracer to use, or None when tracing is off (not installed, not configured)."""
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider) or type(provider).__name__.startswith("NoOp"):
        return None
    return provider.get_tracer(_NAME)


def inject(headers: Mapping[str, Any], span: Any) -> dict[str, Any]:
    """``headers`` plus the trace context of ``span``, as the propagators write it."""
    carrier = dict(headers)
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


@contextmanager
def producer_span(active: Any, name: str, message_id: str, queue: str) -> Iterator[Any]:
    with active.start_as_current_span(f"apply_async/{name}", kind=SpanKind.PRODUCER) as span:
        span.set_attribute("celery.action", "apply_async")
        span.set_attribute("celery.task_name", name)
        span.set_attribute("messaging.message_id", message_id)
        span.set_attribute("messaging.destination", queue)
        yield span


class _HeaderGetter:
    """Reads a message's headers as the Celery instrumentation reads a request's attributes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value] if isinstance(value, str) else [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def consumer_span(active: Any, task: str, message_id: str, headers: Mapping[str, Any],
                  properties: Mapping[str, Any], queue: str, retries: int) -> Any:
    """Start (not activate) the ``run/<task>`` span, its parent taken from ``headers``."""
    parent = propagate.extract(headers, getter=_GETTER)  # type: ignore[arg-type]
    span = active.start_span(f"run/{task}", context=parent, kind=SpanKind.CONSUMER)
    if span.is_recording():
        span.set_attribute("celery.action", "run")
        span.set_attribute("celery.task_name", task)
        span.set_attribute("messaging.message_id", message_id)
        info = properties.get("delivery_info")
        destination = info.get("routing_key") if isinstance(info, dict) else None
        span.set_attribute("messaging.destination", destination or queue)
        correlation = properties.get("correlation_id")
        if isinstance(correlation, str) and correlation:
            span.set_attribute("messaging.conversation_id", correlation)
        if retries:
            span.set_attribute("celery.retries", retries)
    return span


@contextmanager
def current(span: Any) -> Iterator[None]:
    with trace.use_span(span, end_on_exit=False):
        yield


def failed(span: Any, error: BaseException, retrying: bool) -> None:
    if retrying:
        span.set_attribute("celery.retry.reason", str(error))
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error)))
