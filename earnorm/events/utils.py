"""The spec's import path for ``dispatch_model_event`` (alias of ``earnorm.dispatch_model_event``).

>>> from earnorm.events.utils import dispatch_model_event
>>> import earnorm
>>> dispatch_model_event is earnorm.dispatch_model_event
True
"""

from earnorm.base._events import dispatch_model_event, model_data

__all__ = ["dispatch_model_event", "model_data"]
