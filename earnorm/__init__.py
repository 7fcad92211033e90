"""EarnORM: an async MongoDB ORM with a Celery-compatible asyncio event system on Redis.

>>> import earnorm
>>> await earnorm.init(redis_uri="redis://localhost:6379/0",
...                    event_config={"queue_name": "app:events"})  # doctest: +SKIP
>>> from earnorm import event_bus
>>> await event_bus.publish(Event(name="user.created", data={"id": 7}))  # doctest: +SKIP
"""

from __future__ import annotations

from earnorm._runtime import close, event_bus, init
from earnorm.errors import (
    ConfigError,
    EarnORMError,
    EventValidationError,
    JobNotFound,
    MessageDecodeError,
    NotInitializedError,
    PublishError,
    SerializationError,
)
from earnorm.events import (
    Consumer,
    Event,
    EventBus,
    HandlerRegistry,
    event_handler,
    model_event_handler,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Consumer",
    "EarnORMError",
    "Event",
    "EventBus",
    "EventValidationError",
    "HandlerRegistry",
    "JobNotFound",
    "MessageDecodeError",
    "NotInitializedError",
    "PublishError",
    "SerializationError",
    "__version__",
    "close",
    "event_bus",
    "event_handler",
    "init",
    "model_event_handler",
]
