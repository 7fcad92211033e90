"""EarnORM's event system: Celery-wire events on Redis with an asyncio consumer.

This is the spec's namespace for events: what a user of events looks for is importable from
here as well as from ``earnorm`` (the same objects; ``tests/spec/test_imports.py`` keeps the two
in step)::

    from earnorm.events import Event, event_handler, model_event_handler

``earnorm.events.decorators`` and ``earnorm.events.utils`` are the spec's paths for the model
decorators and ``dispatch_model_event``; ``python -m earnorm.events`` and
``python -m earnorm.events.consumer`` are the command lines. The implementation lives in private
modules (map: ``docs/architecture.md``).

>>> from earnorm.events import Event, event_handler
>>> import earnorm
>>> Event is earnorm.Event and event_handler is earnorm.event_handler
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from earnorm._lazy import lazy_exports

if TYPE_CHECKING:
    from earnorm._runtime import event_bus
    from earnorm.base._events import after_save, before_save, dispatch_model_event
    from earnorm.events._bus import EventBus
    from earnorm.events._handlers import (
        Handler,
        HandlerRegistry,
        event_handler,
        model_event_handler,
        model_event_name,
    )
    from earnorm.events._periodic import Schedule, periodic_event
    from earnorm.events._wire.event import Event
    from earnorm.events._wire.failures import FailureReason
    from earnorm.events._wire.records import FailedJob, QueueStats
    from earnorm.events.consumer import Consumer, ConsumerGroup

# Loaded on first use, so that importing one private module of this package (as the consumer,
# the ORM and ``earnorm`` itself do) does not load them all, and the model-event helpers (which
# need PyMongo's bson) stay out of an events-only process.
_WHERE = {
    "Event": "earnorm.events._wire.event",
    "EventBus": "earnorm.events._bus",
    "FailureReason": "earnorm.events._wire.failures",
    "Handler": "earnorm.events._handlers",
    "HandlerRegistry": "earnorm.events._handlers",
    "event_handler": "earnorm.events._handlers",
    "model_event_handler": "earnorm.events._handlers",
    "model_event_name": "earnorm.events._handlers",
    "after_save": "earnorm.base._events",
    "before_save": "earnorm.base._events",
    "dispatch_model_event": "earnorm.base._events",
    "Schedule": "earnorm.events._periodic",
    "periodic_event": "earnorm.events._periodic",
    "FailedJob": "earnorm.events._wire.records",
    "QueueStats": "earnorm.events._wire.records",
    "Consumer": "earnorm.events.consumer",
    "ConsumerGroup": "earnorm.events.consumer",
    "event_bus": "earnorm._runtime",
}

__all__ = [  # _WHERE's names; a test holds the two equal
    "Consumer", "ConsumerGroup", "Event", "EventBus", "FailedJob", "FailureReason", "Handler",
    "HandlerRegistry", "QueueStats", "Schedule", "after_save", "before_save",
    "dispatch_model_event", "event_bus", "event_handler", "model_event_handler",
    "model_event_name", "periodic_event",
]


__getattr__, __dir__ = lazy_exports("earnorm.events", _WHERE, globals())
