"""EarnORM: an async MongoDB ORM with a Celery-compatible asyncio event system on Redis.

Every public name is imported from here (``earnorm.base``, ``earnorm.events.decorators`` and
``earnorm.events.utils`` are the spec's aliases); the module map is ``docs/architecture.md``:
``_config`` / ``_runtime`` (init), ``base/`` (the ORM), ``events/_protocol`` (Celery's wire,
pure), ``events/_broker`` (the only Redis keys and scripts), ``events/_bus`` (publishing,
failed jobs, stats), ``events/consumer/`` (the consumer: pure decisions in ``_decide``, one
owned task per loop).

>>> import earnorm
>>> await earnorm.init(mongo_uri="mongodb://localhost:27017", database="app",
...                    redis_uri="redis://localhost:6379/0",
...                    event_config={"queue_name": "app:events"})  # doctest: +SKIP
>>> from earnorm import event_bus
>>> await event_bus.publish(Event(name="user.created", data={"id": 7}))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from earnorm._environment import Environment
from earnorm._errors import (
    BrokerConnectionError,
    ConfigError,
    DatabaseError,
    DocumentNotFound,
    EarnORMError,
    EventValidationError,
    JobNotFound,
    MessageDecodeError,
    NotInitializedError,
    NotReplicated,
    PublishError,
    SerializationError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    UnsupportedProtocol,
    ValidationError,
)
from earnorm._lazy import lazy_exports
from earnorm._runtime import close, env, event_bus, init
from earnorm._transaction import run_in_transaction, transaction
from earnorm.events._broker.cache import Cache
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

if TYPE_CHECKING:
    from earnorm.base import (
        BaseModel,
        after_create,
        after_delete,
        after_update,
        after_write,
        before_create,
        before_delete,
        before_update,
        before_write,
    )
    from earnorm.base._events import after_save, before_save, dispatch_model_event
    from earnorm.events._tools.embedded import LocalRedis, start_local_redis

from earnorm._version import __version__

# The ORM (and PyMongo with it) and the embedded Redis are imported on first use: an
# events-only process (a consumer, a publisher) never loads them.
_LAZY = {
    **dict.fromkeys(("BaseModel", "after_create", "after_delete", "after_update",
                     "after_write", "before_create", "before_delete", "before_update",
                     "before_write"), "earnorm.base"),
    **dict.fromkeys(("after_save", "before_save", "dispatch_model_event"),
                    "earnorm.base._events"),
    # a local Redis for development: subprocess, tempfile and friends, not a consumer's
    **dict.fromkeys(("LocalRedis", "start_local_redis"), "earnorm.events._tools.embedded"),
}


__getattr__, __dir__ = lazy_exports("earnorm", _LAZY, globals())

__all__ = [
    "BaseModel",
    "BrokerConnectionError",
    "Cache",
    "ConfigError",
    "Consumer",
    "ConsumerGroup",
    "DatabaseError",
    "DocumentNotFound",
    "EarnORMError",
    "Environment",
    "Event",
    "EventBus",
    "EventValidationError",
    "FailedJob",
    "FailureReason",
    "Handler",
    "HandlerRegistry",
    "JobNotFound",
    "LocalRedis",
    "MessageDecodeError",
    "NotInitializedError",
    "NotReplicated",
    "PublishError",
    "QueueStats",
    "Schedule",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TimeLimitExceeded",
    "UnsupportedProtocol",
    "ValidationError",
    "__version__",
    "after_create",
    "after_delete",
    "after_save",
    "after_update",
    "after_write",
    "before_create",
    "before_delete",
    "before_save",
    "before_update",
    "before_write",
    "close",
    "dispatch_model_event",
    "env",
    "event_bus",
    "event_handler",
    "init",
    "model_event_handler",
    "model_event_name",
    "periodic_event",
    "run_in_transaction",
    "start_local_redis",
    "transaction",
]
