"""OpenTelemetry, both ways, with the real opentelemetry-instrumentation-celery on the Celery
side: a trace started by an instrumented Celery producer continues in our handler, and one
started by our publish continues in an instrumented Celery worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from earnorm import Consumer, Event, EventBus, HandlerRegistry
from tests.helpers import wait_until
from tests.interop.celery_app import make_app
from tests.interop.harness import celery_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A global tracer provider with an in-memory exporter for this test only (OpenTelemetry
    allows setting it once per process: the test resets it, as OpenTelemetry's own tests do)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None


def by_name(exporter: InMemorySpanExporter, name: str) -> Any:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


async def test_a_trace_from_an_instrumented_celery_producer_continues_in_our_handler(
    spans: InMemorySpanExporter, redis_url: str, queue_name: str
) -> None:
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    app = make_app(redis_url, queue_name)
    app.task(name="traced.task", shared=False)(lambda *a, **k: None)
    seen: list[Any] = []
    registry = HandlerRegistry()

    async def handler(event: Event) -> None:
        seen.append(trace.get_current_span().get_span_context())

    registry.register("traced.task", handler)
    try:
        task_id = app.send_task("traced.task", args=[{"n": 1}]).id
        async with Consumer(redis_url, queue_name=queue_name, registry=registry):
            await wait_until(lambda: seen, 10, message="the traced event")
    finally:
        instrumentor.uninstrument()
        app.close()
    producer = by_name(spans, "apply_async/traced.task")
    consumer = by_name(spans, "run/traced.task")
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.kind is trace.SpanKind.CONSUMER
    assert seen[0].span_id == consumer.context.span_id, "the handler runs in our span"
    assert consumer.attributes["celery.action"] == "run"
    assert consumer.attributes["celery.task_name"] == "traced.task"
    assert consumer.attributes["messaging.message_id"] == task_id
    assert consumer.attributes["messaging.destination"] == queue_name


async def test_a_trace_from_our_publish_continues_in_an_instrumented_celery_worker(
    spans: InMemorySpanExporter, redis_url: str, queue_name: str
) -> None:
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    with celery_worker(redis_url, queue_name, env={"INTEROP_OTEL": "1"}) as worker:
        job = await bus.publish(Event(name="user.created", data={"n": 1}))
        await wait_until(lambda: worker.count() == 1, 20, message="the Celery task")
        [record] = worker.records()
    await bus.close()
    producer = by_name(spans, "apply_async/user.created")
    assert producer.kind is trace.SpanKind.PRODUCER
    assert producer.attributes["messaging.message_id"] == job
    assert record["trace"] == {"trace_id": f"{producer.context.trace_id:032x}",
                               "parent_span_id": f"{producer.context.span_id:016x}"}


async def test_a_failing_handler_records_its_exception_on_the_span(
    spans: InMemorySpanExporter, redis_url: str, queue_name: str
) -> None:
    registry = HandlerRegistry()

    async def fail(event: Event) -> None:
        raise ValueError("declined")

    registry.register("traced.fail", fail, retry_policy={"max_retries": 0})
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry) as consumer:
        await bus.publish(Event(name="traced.fail"))
        await wait_until(lambda: consumer.failed == 1, 10)
    await bus.close()
    span = by_name(spans, "run/traced.fail")
    assert span.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.type"] == "ValueError"


async def test_a_debounced_publish_has_its_producer_span_and_the_run_continues_it(
    spans: InMemorySpanExporter, redis_url: str, queue_name: str
) -> None:
    """Of a debounced burst, the event that runs carries its own publish's trace."""
    registry = HandlerRegistry()
    ran: list[str] = []

    async def reindex(event: Event) -> None:
        ran.append(event.id)

    registry.register("search.reindex", reindex)
    bus = await EventBus.connect(redis_url, queue_name=queue_name)
    async with Consumer(bus=bus, registry=registry):
        for _ in range(3):
            last = await bus.publish(Event(name="search.reindex"), debounce_key="doc:7",
                                     debounce=0.2)
        await wait_until(lambda: ran == [last], 10, message="the last of the burst")
    await bus.close()
    producers = [s for s in spans.get_finished_spans() if s.name == "apply_async/search.reindex"]
    assert len(producers) == 3
    assert all(dict(s.attributes or {})["earnorm.debounce_key"] == "doc:7" for s in producers)
    [mine] = [s for s in producers if dict(s.attributes or {})["messaging.message_id"] == last]
    run = by_name(spans, "run/search.reindex")
    assert run.parent.span_id == mine.context.span_id
