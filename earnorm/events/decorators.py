"""The spec's import path for the decorators (an alias: every name here is also in ``earnorm``).

>>> from earnorm.events.decorators import after_save, event_handler
>>> import earnorm
>>> after_save is earnorm.after_save and event_handler is earnorm.event_handler
True
"""

from earnorm.base._events import after_save, before_save, dispatch_model_event
from earnorm.base._hooks import (
    after_create,
    after_delete,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_update,
    before_write,
)
from earnorm.events._handlers import event_handler, model_event_handler

__all__ = [
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
    "dispatch_model_event",
    "event_handler",
    "model_event_handler",
]
