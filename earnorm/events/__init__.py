"""EarnORM's event system: Celery-wire events on Redis with an asyncio consumer."""

from earnorm.events.bus import EventBus
from earnorm.events.consumer import Consumer
from earnorm.events.event import Event
from earnorm.events.failures import FailureReason
from earnorm.events.handlers import (
    Handler,
    HandlerRegistry,
    default_registry,
    event_handler,
    model_event_handler,
    model_event_name,
)

__all__ = [
    "Consumer",
    "Event",
    "EventBus",
    "FailureReason",
    "Handler",
    "HandlerRegistry",
    "default_registry",
    "event_handler",
    "model_event_handler",
    "model_event_name",
]
